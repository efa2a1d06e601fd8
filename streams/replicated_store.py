"""A key-value store every worker holds whole: a local RocksDB, replicated through a compacted topic.

The MPI index must be whole on every worker (a candidate can sit under any blocking
key, whichever partition wrote it). It was a Faust GlobalTable, whose standby
consumes every changelog record back through Faust's Python consumer path: with a
dozen index writes per event that cost 2.5-3 ms of worker CPU per event, more than
all four stages together (bench pipeline, issue 6). Here:

- **writes** go to the local RocksDB at once, and their changelog records (tagged
  with this process's writer id and a sequence number) are returned by ``flush()``
  for the caller to send with the batch's outputs, so input offsets are committed
  only after the index writes they caused are durable;
- **reads** come from the batch's pending writes, then this process's writes the
  topic has not echoed yet, then a bounded read cache, then RocksDB;
- **replication**: a librdkafka consumer thread tails every partition and applies
  every record in partition order (so all workers converge to the topic's state),
  in RocksDB write batches that also store the next offset per partition, so a
  restart resumes where it stopped; the read cache drops what it applies.  An
  echo of this process's own write is not written again (RocksDB has held it, or
  a newer own write, since ``flush()``) unless another writer's record for that
  key was applied in between, which the topic orders before ours; with one
  worker that is every record, and the read cache stays warm;
- **start-up**: ``start()`` reads every partition to its end-of-partition event
  (not a watermark: the embedded broker under-reports them) before returning, so
  the worker takes no event with a partial index.

Two workers writing one key at the same instant both end with the value the topic
holds last; for the MPI that is at worst a missed link (a review or a new EUID),
the same trade-off the GlobalTable made.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient
from rocksdict import Rdict, WriteBatch

from schemas import metrics
from streams.stage import Output
from streams.state import StateStoreSettings
from topology.broker import fetch_wait_config
from topology.plan import ensure_topic
from topology.settings import KafkaSettings

log = logging.getLogger(__name__)

WRITER_HEADER = "clinstream-writer"
_OFFSET_PREFIX = b"\x00offset:"  # next offset to read, per partition, kept with the data
_MISSING = object()


class ReplicationError(RuntimeError):
    """The store's topic could not be created or read to its end."""


class ReplicatedStore:
    """``partitions`` is what a missing topic is created with; an existing topic is read with the
    partitions it has.  One is the default: every worker reads the whole topic anyway, and on a
    broker whose cost is per request (the embedded one: about 1 ms each, and librdkafka sends one
    produce request per partition) each further partition adds a request to every batch."""

    def __init__(self, settings: KafkaSettings, topic: str, path: str | Path, *, partitions: int = 1,
                 replication_factor: int = 1, state: StateStoreSettings | None = None) -> None:
        self.settings = settings
        self.topic = topic
        self.partitions = partitions
        self.replication_factor = replication_factor
        state = state or StateStoreSettings()
        Path(path).mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(path), options=state.rocksdict_options())
        self._writer = uuid.uuid4().hex
        self._writer_tag = f"{self._writer}:".encode()  # header value: tag + sequence number
        self._seq = 0
        self._pending: dict[str, Any] = {}
        self._cache: dict[str, Any] = {}
        self._cache_entries = state.index_cache_entries
        self._unechoed: dict[bytes, tuple[int, Any]] = {}  # own writes not yet read back: key -> (seq, value)
        self._overwritten: set[bytes] = set()  # unechoed keys another writer's record replaced in RocksDB
        self._applied_to: dict[int, int] = {}  # partition -> next offset to apply (what RocksDB has)
        self._lock = threading.Lock()
        self._consumer: Consumer | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.applied = 0  # records applied from the topic (own and other workers')
        self._applied_metric = metrics.REPLICA_RECORDS_APPLIED.labels(topic)
        self._unechoed_metric = metrics.REPLICA_UNECHOED_WRITES.labels(topic)

    # --- the engine's KeyValueStore --------------------------------------------------------------

    def get(self, key: str, default: Any = None, /) -> Any:
        value = self._pending.get(key, _MISSING)
        if value is _MISSING:
            value = self._cache.get(key, _MISSING)
            if value is _MISSING:
                raw_key = orjson.dumps(key)
                own = self._unechoed.get(raw_key)
                if own is not None:
                    value = own[1]
                else:
                    raw = self._db.get(raw_key)
                    value = None if raw is None else orjson.loads(raw)
                    if len(self._cache) >= self._cache_entries:
                        self._cache.clear()
                    self._cache[key] = value
        return default if value is None else value

    def put(self, key: str, value: Any) -> None:
        self._pending[key] = value

    def flush(self) -> list[Output]:
        """Write the batch's puts to RocksDB; returns their changelog records, to send with the batch."""
        if not self._pending:
            return []
        out: list[Output] = []
        batch = WriteBatch(raw_mode=True)
        cache, bound = self._cache, self._cache_entries
        with self._lock:
            for key, value in self._pending.items():
                raw_key = orjson.dumps(key)  # the key as Faust's json key serializer wrote it
                self._seq += 1
                data = None if value is None else orjson.dumps(value)
                if data is None:
                    batch.delete(raw_key)
                else:
                    batch.put(raw_key, data)
                self._unechoed[raw_key] = (self._seq, value)
                if len(cache) >= bound:  # the read cache's one rule, as in get(): full, start again
                    cache.clear()
                cache[key] = value
                out.append(Output(self.topic, data, raw_key, [(WRITER_HEADER, self._writer_tag + b"%d" % self._seq)]))
        self._db.write(batch)
        self._pending.clear()
        return out

    # --- replication -------------------------------------------------------------------------------

    def start(self, timeout_s: float = 120.0) -> None:
        """Create the topic if missing, read it to its end, then keep tailing it on a thread."""
        self._ensure_topic()
        self._consumer = Consumer(self.settings.librdkafka(**{
            "group.id": f"clinstream-replica-{self._writer[:12]}",  # assign() only; never commits
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            # a stored offset the topic no longer has (recreated, or compacted away): re-read all of it
            "auto.offset.reset": "earliest",
            **fetch_wait_config(self.settings),
            "queued.max.messages.kbytes": 8192,  # the default prefetch (64 MB) is mostly idle memory here
        }))
        for p in range(self.partitions):
            stored = self._db.get(_OFFSET_PREFIX + str(p).encode())
            self._applied_to[p] = int(stored) if stored else OFFSET_BEGINNING
        self._consumer.assign([TopicPartition(self.topic, p, o) for p, o in self._applied_to.items()])
        todo = set(range(self.partitions))
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise ReplicationError(f"{self.topic}: partitions {sorted(todo)} not read to their end "
                                       f"within {timeout_s:.0f}s")
            todo -= self._poll_once(1.0)
        log.info("%s: replica caught up (%d records applied)", self.topic, self.applied)
        self._thread = threading.Thread(target=self._tail, name=f"replica-{self.topic}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        self._db.close()

    def _tail(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll_once(0.2)
            except Exception:  # keep replicating; a broker hiccup must not freeze the index
                log.exception("%s: replication poll failed; re-reading from the last applied offsets", self.topic)
                self._stop.wait(1.0)
                self._rewind()

    def _rewind(self) -> None:
        """Seek back to what RocksDB has applied: records a failed poll consumed are read again, not skipped."""
        assert self._consumer is not None
        for partition, offset in self._applied_to.items():
            try:
                self._consumer.seek(TopicPartition(self.topic, partition, offset))
            except KafkaException:  # not fetching yet: the assignment's offset still stands
                self._consumer.assign([TopicPartition(self.topic, p, o) for p, o in self._applied_to.items()])
                return

    def _poll_once(self, timeout_s: float) -> set[int]:
        """Apply what one poll brings; returns the partitions that reported their end."""
        assert self._consumer is not None
        return self.apply(self._consumer.consume(1000, timeout_s))

    def apply(self, msgs: Sequence[Message]) -> set[int]:
        """Apply records of the store's topic, in the order a consumer returned them.

        The tail thread calls this with each poll; ``bench stages`` with the echo of its own
        writes. Returns the partitions that reported their end.
        """
        at_end: set[int] = set()
        if not msgs:
            return at_end
        batch = WriteBatch(raw_mode=True)
        offsets: dict[int, int] = {}
        applied = 0
        tag, unechoed = self._writer_tag, self._unechoed
        # Decided here, changed only once RocksDB has the batch: a failed write leaves nothing half-applied.
        echoed: list[tuple[bytes, int]] = []
        changed: list[bytes] = []
        with self._lock:  # flush() changes the unechoed writes these decisions read
            overwritten = set(self._overwritten)
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_end.add(msg.partition())
                        continue
                    raise KafkaException(err)
                key = msg.key()
                if key is None:
                    continue
                offsets[msg.partition()] = msg.offset() + 1
                applied += 1
                own_seq = -1
                for name, tagged in msg.headers() or ():
                    if name == WRITER_HEADER and tagged and tagged.startswith(tag):
                        own_seq = int(tagged[len(tag):])
                if own_seq >= 0:
                    echoed.append((key, own_seq))
                    if key not in overwritten:
                        continue  # RocksDB holds this write or a newer own one; the read cache too
                    own = unechoed.get(key)
                    if own is not None and own[0] == own_seq:
                        overwritten.discard(key)  # the last own write: the topic and RocksDB agree again
                elif key in unechoed:
                    overwritten.add(key)  # our pending write follows this one in the topic
                value = msg.value()
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
                changed.append(key)
            for partition, nxt in offsets.items():
                batch.put(_OFFSET_PREFIX + str(partition).encode(), str(nxt).encode())
            self._db.write(batch)
            self._applied_to.update(offsets)
            self._overwritten = overwritten
            for key, seq in echoed:  # the topic now holds this write: RocksDB serves it again
                own = unechoed.get(key)
                if own is not None and own[0] == seq:
                    del unechoed[key]
            cache = self._cache
            for key in changed:
                cache.pop(orjson.loads(key), None)
        self.applied += applied
        self._applied_metric.inc(applied)
        self._unechoed_metric.set(len(self._unechoed))
        return at_end

    def _ensure_topic(self, timeout_s: float = 30.0) -> None:
        admin = AdminClient(self.settings.librdkafka())
        try:
            ensure_topic(admin, self.topic, partitions=self.partitions,
                         replication_factor=self.replication_factor, configs={"cleanup.policy": "compact"})
        except Exception as exc:
            raise ReplicationError(f"cannot create {self.topic}: {exc}") from exc
        deadline = time.monotonic() + timeout_s
        while True:  # a topic just created can take a moment to show its partitions
            meta = admin.list_topics(self.topic, timeout=10).topics.get(self.topic)
            if meta is not None and meta.error is None and meta.partitions:
                self.partitions = len(meta.partitions)
                return
            if time.monotonic() > deadline:
                raise ReplicationError(f"{self.topic}: no partitions in the metadata after {timeout_s:.0f}s")
            time.sleep(0.1)

