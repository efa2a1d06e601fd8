"""Typed sink errors: the runner's reaction depends only on the class.

- :class:`SinkRetryable`: the target is unavailable or busy; retry the same batch with
  backoff, never advancing offsets.
- :class:`SinkRejected`: the target refuses these records for good (bad data, 4xx);
  they go to ``dlq.sink`` and the sink moves past them.
- :class:`SinkConfigError`: the sink cannot be built from its options; names the key.
- :class:`SinkOffsetsMoved`: another writer advanced the stored offsets of these
  partitions (a rebalance zombie); re-seek to the target's offsets and carry on.
"""

from __future__ import annotations

from collections.abc import Iterable


class SinkError(Exception):
    """Base of every sink error; a bare SinkError stops the runner."""


class SinkRetryable(SinkError):
    """Transient: the same write may succeed later."""


class SinkOffsetsMoved(SinkRetryable):
    """The offsets stored in the target are not where this writer left them (fenced)."""

    def __init__(self, message: str, partitions: Iterable[int]) -> None:
        super().__init__(message)
        self.partitions = sorted(set(partitions))


class SinkRejected(SinkError):
    """Permanent refusal. ``offsets`` names the refused records as (partition, offset) when known;
    when empty the runner isolates the culprit(s) by writing record by record."""

    def __init__(self, message: str, offsets: Iterable[tuple[int, int]] = ()) -> None:
        super().__init__(message)
        self.offsets = sorted(set(offsets))


class SinkConfigError(SinkError, ValueError):
    """Invalid sink configuration; ``key`` is the offending option path (e.g. ``options.table``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
