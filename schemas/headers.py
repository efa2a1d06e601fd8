"""Record header names (DESIGN §3) and helpers to read/write them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

EVENT_ID = "clinstream-event-id"
SOURCE = "clinstream-source"
TRACEPARENT = "traceparent"
SCHEMA_FINGERPRINT = "clinstream-schema"
RECEIVED_AT = "clinstream-received-at"
# DLQ records
ERROR_STAGE = "error-stage"
ERROR_CLASS = "error-class"
ERROR_MESSAGE = "error-message"
ORIGIN_TOPIC = "origin-topic"
ORIGIN_PARTITION = "origin-partition"
ORIGIN_OFFSET = "origin-offset"
REDRIVE_COUNT = "redrive-count"

HeaderList = list[tuple[str, bytes]]


def as_dict(headers: Iterable[tuple[str, bytes | str | None]] | None) -> dict[str, str]:
    """Decode a Kafka header list (either client's shape) into str -> str; last one wins."""
    out: dict[str, str] = {}
    for key, value in headers or ():
        if value is None:
            out[key] = ""
        elif isinstance(value, bytes):
            out[key] = value.decode("utf-8", "replace")
        else:
            out[key] = value
    return out


def encode(pairs: Sequence[tuple[str, str | bytes]]) -> HeaderList:
    return [(k, v if isinstance(v, bytes) else v.encode("utf-8")) for k, v in pairs]


def traceparent_for(event_id: str) -> str:
    """A W3C traceparent derived from the event id, so every stage of one event shares a trace."""
    trace = event_id.replace("-", "")
    return f"00-{trace}-{trace[:16]}-01"


def dlq_headers(
    *,
    stage: str,
    error: BaseException | str,
    error_class: str | None = None,
    origin_topic: str,
    origin_partition: int,
    origin_offset: int,
    source: str | None = None,
    event_id: str | None = None,
    extra: Sequence[tuple[str, str]] = (),
) -> HeaderList:
    """Headers every DLQ record carries, so it can be listed, explained and redriven."""
    if isinstance(error, BaseException):
        error_class, message = error_class or type(error).__name__, str(error)
    else:
        error_class, message = error_class or "Rejected", error
    pairs: list[tuple[str, str]] = [
        (ERROR_STAGE, stage),
        (ERROR_CLASS, error_class),
        (ERROR_MESSAGE, message[:1000]),
        (ORIGIN_TOPIC, origin_topic),
        (ORIGIN_PARTITION, str(origin_partition)),
        (ORIGIN_OFFSET, str(origin_offset)),
    ]
    if source:
        pairs.append((SOURCE, source))
    if event_id:
        pairs.append((EVENT_ID, event_id))
    pairs.extend(extra)
    return encode(pairs)
