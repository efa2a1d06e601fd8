"""The composition root: the `clinstream` CLI wires sources, agents and sinks together."""
