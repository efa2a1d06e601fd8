"""Faust app and stream agents of clinstream (no I/O besides Kafka)."""
