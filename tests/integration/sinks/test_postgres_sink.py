"""Postgres sink through the SinkRunner on a real broker and a real PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg

from connectors.sinks.registry import create_sink
from connectors.sinks.runner import SinkRunner
from schemas.envelope import encode_event
from schemas.headers import SCHEMA_FINGERPRINT, as_dict
from tests.integration.sinks.conftest import Dest
from tests.support.events import RunnerThread, consume_all, make_event, produce, wait_until
from topology.model import SinkSpec


def _runner(dest: Dest, dsn: str, table: str, group: str, **kw: object) -> SinkRunner:
    sink = create_sink(SinkSpec(kind="postgres", options={"dsn": dsn, "table": table}), dest.name, dest.settings)
    return SinkRunner(sink, topic=dest.topic, settings=dest.settings, group_id=group, poll_timeout_s=0.2, **kw)


def _count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        try:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]
        except psycopg.errors.UndefinedTable:
            return 0


def _offsets(dsn: str, topic: str) -> dict[int, int]:
    with psycopg.connect(dsn) as conn:
        try:
            rows = conn.execute(
                "SELECT partition, next_offset FROM clinstream_sink_offsets WHERE topic = %s", (topic,)
            ).fetchall()
        except psycopg.errors.UndefinedTable:  # the runner has not created it yet
            return {}
    return {int(p): int(o) for p, o in rows}


def test_exactly_once_across_restart_with_duplicates(
    dest: Dest, fresh_pg_dsn: str, unique_name: Callable[[str], str]
) -> None:
    table = "events"
    first = [make_event(i, dest.name) for i in range(300)]
    hw = produce(dest.bootstrap, dest.topic, first)

    with RunnerThread(_runner(dest, fresh_pg_dsn, table, unique_name("g"))) as rt:
        wait_until(lambda: (rt.check(), _count(fresh_pg_dsn, table) >= 300)[1], 30, "300 rows")
    assert rt.result.delivered == 300
    assert _count(fresh_pg_dsn, table) == 300

    # More events plus duplicates of already-delivered ones (same bytes → same event id).
    more = [make_event(i, dest.name) for i in range(300, 400)]
    hw |= produce(dest.bootstrap, dest.topic, more + first[:50])
    assert sum(hw.values()) == 450

    # A fresh group id without Kafka commits: only the offsets stored in Postgres say where to resume.
    with RunnerThread(_runner(dest, fresh_pg_dsn, table, unique_name("g"), commit_to_kafka=False)) as rt2:
        wait_until(lambda: (rt2.check(), _offsets(fresh_pg_dsn, dest.topic) == hw)[1], 30, "offsets at high watermark")
    assert rt2.result.delivered == 150, "the restart must resume after the stored offsets, not from the start"
    assert _count(fresh_pg_dsn, table) == 400
    assert _offsets(fresh_pg_dsn, dest.topic) == hw

    with psycopg.connect(fresh_pg_dsn) as conn:
        row = conn.execute(
            "SELECT destination, event_type, source, patient_euid, event->>'source_message_id',"
            " jsonb_array_length(resources), received_at IS NOT NULL, delivered_at IS NOT NULL"
            " FROM events WHERE event_id = %s", (first[0]["event_id"],),
        ).fetchone()
    assert row == (dest.name, "ADT^A01", "test-feed", first[0]["patient"]["euid"], "MSG000000", 2, True, True)


def test_undecodable_and_rejected_records_go_to_dlq(
    dest: Dest, fresh_pg_dsn: str, unique_name: Callable[[str], str]
) -> None:
    garbage = b"\x00\x01 definitely not avro"
    # jsonb refuses \u0000: PostgreSQL rejects this one event for good (SinkRejected → DLQ).
    poison = make_event(2, dest.name, resources=[{"resourceType": "Patient", "id": "nul\u0000byte"}])
    # a well-formed envelope, but written with a schema this build does not have: refused, not misread
    foreign = (encode_event(make_event(5, dest.name)), [(SCHEMA_FINGERPRINT, b"f" * 64)])
    records = [make_event(0, dest.name), garbage, poison, make_event(3, dest.name), make_event(4, dest.name), foreign]
    hw = produce(dest.bootstrap, dest.topic, records, key=lambda i: b"same-partition")

    with RunnerThread(_runner(dest, fresh_pg_dsn, "events", unique_name("g"))) as rt:
        wait_until(lambda: (rt.check(), _offsets(fresh_pg_dsn, dest.topic) == hw)[1],
                   30, "offsets past all 6 records")
    assert _count(fresh_pg_dsn, "events") == 3
    assert rt.result.dlq == 3 and rt.result.delivered == 3

    ours = consume_all(dest.bootstrap, "dlq.sink", expected=3, group=unique_name("dlq"),
                       match=lambda m: as_dict(m.headers()).get("origin-topic") == dest.topic)
    by_offset = {int(as_dict(m.headers())["origin-offset"]): m for m in ours}
    assert sorted(by_offset) == [1, 2, 5]
    h5 = as_dict(by_offset[5].headers())
    assert h5["error-class"] == "SchemaMismatchError" and "schema ffffffffffffffff" in h5["error-message"]
    assert by_offset[5].value() == foreign[0]
    h1 = as_dict(by_offset[1].headers())
    assert by_offset[1].value() == garbage
    assert h1["error-stage"] == "sink" and h1["error-class"] == "EnvelopeError"
    assert h1["origin-partition"] == str(next(iter(hw)))
    h2 = as_dict(by_offset[2].headers())
    assert h2["error-class"] == "SinkRejected" and h2["clinstream-event-id"] == poison["event_id"]


def _group_committed(dest: Dest, group: str) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    probe = Consumer({"bootstrap.servers": dest.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = probe.committed([TopicPartition(dest.topic, p) for p in range(3)], timeout=10)
    finally:
        probe.close()
    return {tp.partition: tp.offset for tp in tps if tp.offset >= 0}


def test_offsets_kept_in_postgres_are_mirrored_to_the_group_at_most_once_per_interval(
    dest: Dest, fresh_pg_dsn: str, unique_name: Callable[[str], str]
) -> None:
    group = unique_name("g")
    commits: list[int] = []
    runner = _runner(dest, fresh_pg_dsn, "events", group, batch_size=5, lag_commit_interval_s=30.0,
                     consumer_config={"on_commit": lambda err, parts: commits.append(len(parts))})
    with RunnerThread(runner) as rt:
        hw = produce(dest.bootstrap, dest.topic, [make_event(i, dest.name) for i in range(60)])
        wait_until(lambda: (rt.check(), _offsets(fresh_pg_dsn, dest.topic) == hw)[1], 30, "all delivered")
        assert rt.result is None and runner.stats.batches >= 12  # batches of at most 5 records
        time.sleep(1.0)
        assert len(commits) <= 1, "lag commits are throttled to one per interval, not one per batch"
    # stopping mirrors what was delivered since the last commit
    assert _group_committed(dest, group) == hw
