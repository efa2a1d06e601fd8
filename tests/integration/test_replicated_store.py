"""The MPI index's replicated store: every replica converges on the topic, restarts resume, deletes travel."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from confluent_kafka import Producer

from streams.replicated_store import WRITER_HEADER, ReplicatedStore
from streams.stage import Output
from topology.settings import KafkaSettings


def _send(bootstrap: str, records: list) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    for out in records:
        producer.produce(out.topic, out.value, key=out.key, headers=list(out.headers))
    assert producer.flush(30) == 0


def _eventually(check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "replica did not converge"
        time.sleep(0.05)


@contextmanager
def _replicas(settings: KafkaSettings, topic: str, partitions: int, *paths: Path) -> Iterator[list[ReplicatedStore]]:
    """Started replicas of ``topic``, one per data dir, stopped on the way out."""
    stores: list[ReplicatedStore] = []
    try:
        for path in paths:
            stores.append(ReplicatedStore(settings, topic, path, partitions=partitions))
            stores[-1].start()
        yield stores
    finally:
        for store in stores:
            store.stop()


def test_replicas_converge_resume_and_delete(kafka_bootstrap: str, unique_name, tmp_path: Path):
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    topic = unique_name("replica")
    with _replicas(settings, topic, 3, tmp_path / "a", tmp_path / "b") as (a, b):
        for i in range(200):
            a.put(f"b:key{i}", [f"E{i}"])
        assert a.get("b:key7") == ["E7"]  # the batch's own writes are visible before the flush
        out = a.flush()
        assert len(out) == 200 and all(dict(o.headers)[WRITER_HEADER] for o in out)
        assert a.get("b:key7") == ["E7"]  # and after, before the topic echoed them
        assert b.get("b:key7") is None
        _send(kafka_bootstrap, out)
        _eventually(lambda: b.get("b:key199") == ["E199"])
        assert all(b.get(f"b:key{i}") == [f"E{i}"] for i in range(200))

        # b overwrites and deletes; a sees both (its read cache drops what the topic changes)
        b.put("b:key1", ["E1", "E9"])
        b.put("b:key2", None)
        _send(kafka_bootstrap, b.flush())
        _eventually(lambda: a.get("b:key1") == ["E1", "E9"] and a.get("b:key2") is None)
        _eventually(lambda: not a._unechoed)  # every own write was read back

    # a restart resumes from the offsets kept with the data, and catches up on what it missed
    _send(kafka_bootstrap, [Output(topic, b'["L"]', b'"b:late"')])
    with _replicas(settings, topic, 3, tmp_path / "a") as (again,):
        assert again.applied == 1  # only the record written while it was down
        assert again.get("b:late") == ["L"]
        assert again.get("b:key1") == ["E1", "E9"] and again.get("b:key2") is None
        assert again.get("b:key150") == ["E150"]

    # a new replica (empty data dir) reads the whole topic before start() returns
    # (asked for one partition: an existing topic is read with the partitions it has)
    with _replicas(settings, topic, 1, tmp_path / "c") as (fresh,):
        assert fresh.partitions == 3
        assert fresh.get("b:key150") == ["E150"] and fresh.get("b:key2") is None and fresh.get("b:late") == ["L"]


def test_own_echo_after_another_writers_record_is_applied(kafka_bootstrap: str, unique_name, tmp_path: Path):
    """An own write is not rewritten when echoed, unless another writer's record for the key came between."""
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    topic = unique_name("replica-order")
    with _replicas(settings, topic, 1, tmp_path / "a", tmp_path / "b") as (a, b):
        # a writes first but sends last: the topic holds b's value, then a's
        a.put("b:k", ["A"])
        a.put("b:solo", ["A"])
        late = a.flush()
        b.put("b:k", ["B"])
        _send(kafka_bootstrap, b.flush())
        _eventually(lambda: a.applied == 1)
        assert a.get("b:k") == ["A"]  # its own pending write comes later in the topic
        assert a._db.get(b'"b:k"') == b'["B"]'  # RocksDB follows the topic
        _send(kafka_bootstrap, late)
        _eventually(lambda: not a._unechoed and b.get("b:k") == ["A"])
        assert a._db.get(b'"b:k"') == b'["A"]' and a._db.get(b'"b:solo"') == b'["A"]'
        assert not a._overwritten

        # in topic order a's write, then b's: both end with b's value
        a.put("b:k", ["A2"])
        _send(kafka_bootstrap, a.flush())
        _eventually(lambda: not a._unechoed and b.get("b:k") == ["A2"])
        b.put("b:k", None)
        _send(kafka_bootstrap, b.flush())
        _eventually(lambda: a.get("b:k") is None)
        assert a._db.get(b'"b:k"') is None
    with _replicas(settings, topic, 1, tmp_path / "a") as (again,):
        assert again.get("b:k") is None and again.get("b:solo") == ["A"]


class _FailingWrites:
    """RocksDB whose next ``failures`` batch writes raise (a full disk, say); everything else passes through."""

    def __init__(self, db, failures: int) -> None:
        self._db = db
        self.failures = failures

    def write(self, batch, *args):
        if self.failures > 0:
            self.failures -= 1
            raise OSError("IO error: No space left on device")
        return self._db.write(batch, *args)

    def __getattr__(self, name):
        return getattr(self._db, name)


def test_a_failed_apply_is_read_again_not_skipped(kafka_bootstrap: str, unique_name, tmp_path: Path):
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    topic = unique_name("replica-fail")
    with _replicas(settings, topic, 2, tmp_path / "a", tmp_path / "b") as (a, b):
        flaky = b._db = _FailingWrites(b._db, failures=2)
        for i in range(50):
            a.put(f"b:key{i}", [f"E{i}"])
        _send(kafka_bootstrap, a.flush())
        _eventually(lambda: b.applied == 50, timeout_s=30)
        assert flaky.failures == 0
        assert all(b.get(f"b:key{i}") == [f"E{i}"] for i in range(50))
