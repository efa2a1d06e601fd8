"""Everything that touches the outside world: sources (receive + persist) and sinks (deliver)."""
