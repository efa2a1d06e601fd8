"""Faust tables whose changelog records go out with the stage outputs, through librdkafka.

A Faust table write sends its changelog record through Faust's aiokafka producer:
a future, a buffer entry and a Python-built produce request per write, and a
RocksDB put of the persisted offset per delivered record. When the MPI index was a
table (a dozen keys per event) that path was ~40% of the worker's CPU (py-spy, issue 6).
Here a write only *queues* its serialized record in a ``ChangelogBuffer``; the
agent sends the queue with the batch's outputs through librdkafka (``InFlightOutputs``;
the changelog producer reports every record's offset), and once the batch is durable the
highest delivered offset of each changelog partition is recorded in the table's store,
once per partition.

What Faust relies on is unchanged: a record lands on the changelog partition of
the write's event (or, for ``use_partitioner`` tables, on ``changelog_partition``
of its key, one fixed partition per key so its history stays in order), recovery
and standbys read the changelog as before, and an input offset is still committed
only after the changelog records of the records below it are durable (the commit
gate drains the outputs, and the buffer goes out with them).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

import faust
import orjson
from faust.streams import current_event
from faust.types import TP

ChangelogRecord = tuple[str, int, bytes | None, bytes | None]  # topic, partition, key, value


def changelog_partition(key: bytes, partitions: int) -> int:
    """The changelog partition of a ``use_partitioner`` table key (CRC32: C-fast, stable across runs)."""
    return zlib.crc32(key) % partitions


@dataclass(frozen=True, slots=True)
class _Message:
    partition: int


@dataclass(frozen=True, slots=True)
class QueuedChangelog:
    """What ``Table.on_key_set`` needs back from ``send_changelog``: the partition it went to."""

    message: _Message


class ChangelogBuffer:
    """Changelog records queued by table writes, until the agent sends them with its batch."""

    def __init__(self) -> None:
        self._records: list[ChangelogRecord] = []
        self._tables: dict[str, Any] = {}  # changelog topic -> its table
        self._persisted: dict[tuple[str, int], int] = {}

    def append(self, table: faust.Table, topic: str, partition: int, key: bytes | None,
               value: bytes | None) -> None:
        self._tables[topic] = table
        self._records.append((topic, partition, key, value))

    def take(self) -> list[ChangelogRecord]:
        records, self._records = self._records, []
        return records

    def mark_persisted(self, delivered: dict[tuple[str, int], int]) -> None:
        """Record each changelog partition's highest durable offset in its store (Faust's recovery start).

        Batches may complete out of order across partitions; the recorded offset never moves back."""
        for tp, offset in delivered.items():
            table = self._tables.get(tp[0])
            if table is not None and offset > self._persisted.get(tp, -1):
                self._persisted[tp] = offset
                table.data.set_persisted_offset(TP(*tp), offset)


class _BufferedChangelog:
    changelog_buffer: ChangelogBuffer
    changelog_prefix: str | None = None

    def _changelog_topic_name(self) -> str:
        table: Any = self
        return f"{self.changelog_prefix or table.app.conf.id}-{table.name}-changelog"

    def send_changelog(self, partition: int | None, key: Any, value: Any, key_serializer: Any = None,
                       value_serializer: Any = None) -> QueuedChangelog:
        table: Any = self
        topic = table.changelog_topic
        raw_key, _ = topic.prepare_key(key, key_serializer or table.key_serializer)
        raw_value = None
        if value is not None:
            raw_value, _ = topic.prepare_value(value, value_serializer or table.value_serializer)
        if partition is None:  # use_partitioner: a fixed partition per key
            partition = changelog_partition(raw_key, topic.partitions or table.app.conf.topic_partitions)
        self.changelog_buffer.append(table, topic.get_topic_name(), partition, raw_key, raw_value)
        return QueuedChangelog(_Message(partition))


def buffered_table_class(buffer: ChangelogBuffer, changelog_prefix: str | None = None) -> type[faust.Table]:
    """The Table class (Faust's ``Table`` setting) queueing its changelog to ``buffer``.

    Changelog topics are ``<changelog_prefix>-<table>-changelog``, Faust's names with the app id
    as the prefix by default; a worker whose app id differs (a route-role worker,
    ``topology.acl.worker_group_id``) keeps the tables of the worker it was split from."""
    return type("BufferedChangelogTable", (_BufferedChangelog, faust.Table),
                {"changelog_buffer": buffer, "changelog_prefix": changelog_prefix})


class PartitionedTableView(MutableMapping[str, Any]):
    """``get`` and item assignment on a partitioned Faust table, straight to its RocksDB.

    The dedupe and consent stages read and write their table once or twice per event;
    through Faust's mapping layers that is a serializer-registry call per key and value,
    a ``__contains__`` probe before every read, and a changelog future per write (~7% of
    the worker, py-spy). Here a key goes to the RocksDB of the partition of the event
    being processed (as Faust's own ``_set`` does), encoded as Faust's ``json``
    serializer encodes it (orjson), and its changelog record is queued in the
    ``ChangelogBuffer`` with the batch. Faust still recovers, rebalances and serves
    standbys from the same changelog. A non-RocksDB store (``memory://``) goes through
    the table itself.
    """

    def __init__(self, table: Any) -> None:
        self._table = table
        self._direct: tuple[Any, str] | bool | None = False  # resolved on first use (table started)

    def _rocksdb(self) -> tuple[Any, str] | None:
        if self._direct is False:
            store = self._table.data
            self._direct = ((store, self._table.changelog_topic.get_topic_name())
                            if hasattr(store, "_db_for_partition") else None)
        return self._direct  # type: ignore[return-value]

    @staticmethod
    def _partition() -> int:
        event = current_event()
        if event is None:
            raise RuntimeError("a partitioned table is read and written only while an event is processed")
        return int(event.message.partition)

    def get(self, key: str, default: Any = None) -> Any:
        direct = self._rocksdb()
        if direct is None:
            return self._table.get(key, default)
        raw = direct[0]._db_for_partition(self._partition()).get(orjson.dumps(key))
        return default if raw is None else orjson.loads(raw)

    def __setitem__(self, key: str, value: Any) -> None:
        direct = self._rocksdb()
        if direct is None:
            self._table[key] = value
            return
        store, topic = direct
        partition = self._partition()
        raw_key, raw_value = orjson.dumps(key), orjson.dumps(value)
        store._db_for_partition(partition).put(raw_key, raw_value)
        self._table.changelog_buffer.append(self._table, topic, partition, raw_key, raw_value)

    # the rest of the mapping (not on the hot path): the table's own
    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _ABSENT)
        if value is _ABSENT:
            raise KeyError(key)
        return value

    def __delitem__(self, key: str) -> None:
        del self._table[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)


_ABSENT = object()
