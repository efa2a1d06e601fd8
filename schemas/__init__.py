"""Contracts: the envelope, record headers and the Avro schemas of every topic we own."""
