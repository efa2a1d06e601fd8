"""What a stage is: a pure function from one input record to outcomes.

Every stage has exactly three outcomes per input (DESIGN §5): forward (one or
more output records), drop with a counted reason, or dead-letter with a reason.
The Faust shell in ``streams.app`` turns these into Kafka writes; the stage
logic itself never touches Kafka, so it is unit-testable and benchmarkable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


class StageError(Exception):
    """Base of typed stage errors; caught at the stage boundary and dead-lettered."""


@dataclass(frozen=True, slots=True)
class InRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, str]
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Output:
    topic: str
    value: bytes
    key: bytes | None = None
    headers: Sequence[tuple[str, bytes]] = ()


@dataclass(frozen=True, slots=True)
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
