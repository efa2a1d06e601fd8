"""What a stage is: a pure function from one input record to outcomes.

Every stage has exactly three outcomes per input (DESIGN §5): forward (one or
more output records), drop with a counted reason, or dead-letter with a reason.
The Faust shell in ``streams.app`` turns these into Kafka writes; the stage
logic itself never touches Kafka, so it is unit-testable and benchmarkable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas import headers as H
from schemas.envelope import decode_event


class StageError(Exception):
    """Base of typed stage errors; caught at the stage boundary and dead-lettered."""


# Records and outcomes are built several times per event (a dozen MPI index records per batch
# event too): not ``frozen``, whose __init__ sets every field through object.__setattr__ (3.5x
# slower, ~3% of the worker). Treat them as immutable all the same.
@dataclass(slots=True)
class InRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, str]
    timestamp_ms: int | None = None
    # Handed over in memory by the previous stage of a chain (streams.chain): the decoded
    # envelope, so a chained stage does not decode the bytes the previous one just encoded.
    event: dict[str, Any] | None = None


def event_of(record: InRecord) -> dict[str, Any]:
    """The record's envelope: the one handed over in memory, else decoded from the bytes."""
    if record.event is not None:
        return record.event
    return decode_event(record.value, record.headers.get(H.SCHEMA_FINGERPRINT))


@dataclass(slots=True)
class Output:
    topic: str
    value: bytes | None  # None: a tombstone (compacted topics)
    key: bytes | None = None
    headers: Sequence[tuple[str, bytes]] = ()
    event: dict[str, Any] | None = None  # the envelope ``value`` encodes, for the next stage of a chain


@dataclass(slots=True)
class Outcome:
    """Result of processing one record: outputs (may be several), or a drop, or a DLQ reason."""

    outputs: tuple[Output, ...] = ()
    dropped: str | None = None  # reason; counted, not dead-lettered
    error: BaseException | None = None  # dead-letter with this reason
    counters: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def forward(*outputs: Output) -> Outcome:
        return Outcome(outputs=tuple(outputs))

    @staticmethod
    def drop(reason: str) -> Outcome:
        return Outcome(dropped=reason)

    @staticmethod
    def dead_letter(error: BaseException) -> Outcome:
        return Outcome(error=error)
