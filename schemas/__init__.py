"""Contracts: the envelope, record headers and the Avro schemas of every topic we own."""

from schemas.compiled import load_sources

load_sources(__name__)  # first: picks the compiled or the source envelope codec (see schemas.compiled)
