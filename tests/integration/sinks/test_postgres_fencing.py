"""Postgres sink fencing: a writer whose partition moved on (rebalance zombie) cannot overwrite offsets."""

from __future__ import annotations

import psycopg
import pytest

from connectors.sinks import SinkBatch, SinkOffsetsMoved, SinkRecord, create_sink
from connectors.sinks.postgres import PostgresSink
from tests.support.events import make_event
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
