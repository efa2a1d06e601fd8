"""Sinks: deliver a ``dest.<destination>`` topic to its target system with exactly-once effect."""

from connectors.sinks.base import Sink, SinkBatch, SinkOptions, SinkRecord
from connectors.sinks.errors import SinkConfigError, SinkError, SinkOffsetsMoved, SinkRejected, SinkRetryable
from connectors.sinks.registry import create_sink, register_sink

__all__ = [
    "Sink",
    "SinkBatch",
    "SinkConfigError",
    "SinkError",
    "SinkOffsetsMoved",
    "SinkOptions",
    "SinkRecord",
    "SinkRejected",
    "SinkRetryable",
    "create_sink",
    "register_sink",
]
