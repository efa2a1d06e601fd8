"""Stream agents and their pure logic (no I/O besides Kafka in the agents)."""
