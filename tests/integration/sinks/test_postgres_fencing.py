"""Postgres sink fencing: a writer whose partition moved on (rebalance zombie) cannot overwrite offsets."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

from connectors.sinks import SinkBatch, SinkOffsetsMoved, SinkRecord, create_sink
from connectors.sinks.postgres import PostgresSink
from connectors.sinks.runner import SinkRunner
from tests.integration.sinks.conftest import Dest
from tests.support.events import RunnerThread, make_event, produce, wait_until
from topology.model import SinkSpec

TOPIC = "dest.fence"


def _sink(dsn: str) -> PostgresSink:
    sink = create_sink(SinkSpec(kind="postgres", options={"dsn": dsn, "table": "events"}), "fence")
    assert isinstance(sink, PostgresSink)
    sink.start()
    return sink


def _batch(offsets: range) -> SinkBatch:
    return SinkBatch(TOPIC, 0, [SinkRecord(o, None, make_event(o, "fence")) for o in offsets])


def test_zombie_writer_is_fenced_and_recovers_after_reseek(fresh_pg_dsn: str) -> None:
    a, b = _sink(fresh_pg_dsn), _sink(fresh_pg_dsn)
    try:
        assert a.committed_offsets(TOPIC, [0]) == {}
        a.write([_batch(range(0, 10))])

        # Partition 0 moves to b, which resumes at 10 and delivers more.
        assert b.committed_offsets(TOPIC, [0]) == {0: 10}
        b.write([_batch(range(10, 20))])

        # a, unaware (its session expired), tries to deliver its next batch: refused, nothing written.
        with pytest.raises(SinkOffsetsMoved) as info:
            a.write([_batch(range(10, 15))])
        assert info.value.partitions == [0]
        with psycopg.connect(fresh_pg_dsn) as conn:
            assert conn.execute("SELECT next_offset FROM clinstream_sink_offsets").fetchone() == (20,)
            assert conn.execute("SELECT count(*) FROM events").fetchone() == (20,)

        # After the runner re-seeks (reading the stored offsets again) a can carry on from 20.
        assert a.committed_offsets(TOPIC, [0]) == {0: 20}
        a.write([_batch(range(20, 25))])
        with psycopg.connect(fresh_pg_dsn) as conn:
            assert conn.execute("SELECT next_offset FROM clinstream_sink_offsets").fetchone() == (25,)
    finally:
        a.stop()
        b.stop()


def test_runner_reseeks_when_another_writer_moved_the_offsets(
    dest: Dest, fresh_pg_dsn: str, unique_name: Callable[[str], str]
) -> None:
    one = lambda i: b"one-partition"  # noqa: E731 - every event on the same partition
    events = [make_event(i, dest.name) for i in range(65)]
    (part, end), = produce(dest.bootstrap, dest.topic, events[:50], key=one).items()
    assert end == 50
    options = {"dsn": fresh_pg_dsn, "table": "events"}
    runner = SinkRunner(create_sink(SinkSpec(kind="postgres", options=options), dest.name), topic=dest.topic,
                        settings=dest.settings, group_id=unique_name("g"), poll_timeout_s=0.2)
    with RunnerThread(runner) as rt:
        wait_until(lambda: (rt.check(), _stored(fresh_pg_dsn, dest.topic) == {part: 50})[1], 30, "first 50")

        # Another writer (the partition's new owner after a rebalance) delivers offsets 50..59 first.
        other = create_sink(SinkSpec(kind="postgres", options=options), dest.name)
        other.start()
        assert other.committed_offsets(dest.topic, [part]) == {part: 50}
        other.write([SinkBatch(dest.topic, part, [SinkRecord(50 + i, None, events[50 + i]) for i in range(10)])])
        other.stop()

        # Our runner then reads 50..64 and must not write them over the other writer's offsets.
        produce(dest.bootstrap, dest.topic, events[50:], key=one)
        wait_until(lambda: (rt.check(), _stored(fresh_pg_dsn, dest.topic) == {part: 65})[1], 30, "offset 65")
    assert rt.result.reseeks == 1
    assert rt.result.delivered == 55, "50 + the 5 records after the other writer's batch"
    with psycopg.connect(fresh_pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (65,)


def _stored(dsn: str, topic: str) -> dict[int, int]:
    with psycopg.connect(dsn) as conn:
        try:
            rows = conn.execute("SELECT partition, next_offset FROM clinstream_sink_offsets WHERE topic = %s",
                                (topic,)).fetchall()
        except psycopg.errors.UndefinedTable:
            return {}
    return {int(p): int(o) for p, o in rows}
