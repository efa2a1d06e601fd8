"""The sink contract, modelled on quix-streams' sink API.

A sink receives per-partition batches of decoded events and writes them to its
target. Exactly-once effect comes from one of two designs, declared by
``stores_offsets``:

- ``True`` (Postgres, NDJSON files): ``write`` stores each batch's ``next_offset``
  atomically with the data, and ``committed_offsets`` reads them back; the runner
  resumes from there, never from the consumer group.
- ``False`` (FHIR server, webhook): writes are idempotent by event id, the runner
  resumes from the group's committed offsets (``committed_offsets`` returns {}).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


@dataclass(slots=True)
class SinkRecord:
    offset: int
    key: bytes | None
    event: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def event_id(self) -> str:
        return str(self.event.get("event_id", ""))


@dataclass(slots=True)
class SinkBatch:
    """Consecutive records of one partition. ``next_offset`` is where to resume after this batch;
    it can be past the last record (records skipped to the DLQ) and a batch can be empty
    (only the offset moves)."""

    topic: str
    partition: int
    records: list[SinkRecord]
    next_offset: int = -1

    def __post_init__(self) -> None:
        if self.next_offset < 0:
            if not self.records:
                raise ValueError("an empty SinkBatch needs an explicit next_offset")
            self.next_offset = self.records[-1].offset + 1


class SinkOptions(BaseModel):
    """Base of every sink's options model: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Sink(ABC):
    """One target system. Built by :func:`connectors.sinks.registry.create_sink`."""

    kind: ClassVar[str] = ""
    Options: ClassVar[type[SinkOptions]] = SinkOptions
    stores_offsets: ClassVar[bool] = True

    def __init__(self, options: SinkOptions, destination: str, settings: Any = None) -> None:
        self.options = options
        self.destination = destination
        self.settings = settings

    @property
    def consumer_name(self) -> str:
        """Who owns the offsets stored in the target (one reader per destination)."""
        return f"clinstream-sink-{self.destination}"

    def start(self) -> None:  # noqa: B027 - optional hook, most sinks connect lazily
        """Connect / create what is missing. Idempotent."""

    def stop(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files. Idempotent."""

    def health(self) -> dict[str, Any]:
        return {"sink": self.kind, "destination": self.destination, "ok": True}

    @abstractmethod
    def write(self, batches: list[SinkBatch]) -> None:
        """Deliver the batches; for ``stores_offsets`` sinks, atomically with their ``next_offset``.

        Raises SinkRetryable (nothing was written), SinkRejected (nothing was written;
        names the refused records when it can) or SinkOffsetsMoved.
        """

    @abstractmethod
    def committed_offsets(self, topic: str, partitions: list[int]) -> dict[int, int]:
        """partition -> next offset to read, as stored in the target ({} = use the group's)."""
