"""Everything that touches the outside world: sources (into Kafka) and sinks (out of it).

Imports only ``schemas`` and ``topology`` (never ``streams``).
"""
