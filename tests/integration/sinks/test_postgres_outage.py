"""Postgres unavailable mid-stream (locked table, killed connections): the runner retries, nothing lost or doubled."""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from connectors.sinks.registry import create_sink
from connectors.sinks.runner import SinkRunner
from tests.integration.sinks.conftest import Dest
from tests.support.events import RunnerThread, make_event, produce, wait_until
from topology.model import SinkSpec


def _scalar(dsn: str, query: str) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute(query).fetchone()[0])  # type: ignore[index]


def test_runner_retries_through_a_postgres_outage(
    dest: Dest, fresh_pg_dsn: str, unique_name: Callable[[str], str]
) -> None:
    options = {"dsn": fresh_pg_dsn, "table": "events", "statement_timeout_ms": 300}
    sink = create_sink(SinkSpec(kind="postgres", options=options), dest.name)
    sink.start()
    sink.stop()
    with psycopg.connect(fresh_pg_dsn) as conn:  # witness: one log line per row write
        conn.execute("CREATE TABLE write_log (event_id text NOT NULL)")
        conn.execute("CREATE FUNCTION log_write() RETURNS trigger LANGUAGE plpgsql AS $$"
                     " BEGIN INSERT INTO write_log VALUES (NEW.event_id); RETURN NEW; END $$")
        conn.execute("CREATE TRIGGER log_write AFTER INSERT OR UPDATE ON events"
                     " FOR EACH ROW EXECUTE FUNCTION log_write()")

    expected = produce(dest.bootstrap, dest.topic, [make_event(i, dest.name) for i in range(100)])
    runner = SinkRunner(create_sink(SinkSpec(kind="postgres", options=options), dest.name), topic=dest.topic,
                        settings=dest.settings, group_id=unique_name("g"), poll_timeout_s=0.2,
                        initial_backoff_s=0.1, max_backoff_s=0.5)
    with RunnerThread(runner) as rt:
        wait_until(lambda: (rt.check(), _scalar(fresh_pg_dsn, "SELECT count(*) FROM events") == 100)[1], 30, "100")

        # Outage 1: the table is locked longer than the statement timeout while new events arrive.
        with psycopg.connect(fresh_pg_dsn) as blocker:
            blocker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
            more = [make_event(i, dest.name) for i in range(100, 200)]
            for p, o in produce(dest.bootstrap, dest.topic, more).items():
                expected[p] = max(expected.get(p, 0), o)
            wait_until(lambda: rt.runner.stats.retries >= 2, 20, "retries while the table is locked")
            assert _scalar(fresh_pg_dsn, "SELECT count(*) FROM write_log") == 100
            blocker.rollback()
        wait_until(lambda: _scalar(fresh_pg_dsn, "SELECT count(*) FROM events") == 200, 30, "200 after the lock")

        # Outage 2: the server drops the sink's connections (failover, admin kill).
        retries_before = rt.runner.stats.retries
        with psycopg.connect(fresh_pg_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE application_name LIKE 'clinstream-sink-%%' AND datname = current_database()")
        for p, o in produce(dest.bootstrap, dest.topic, [make_event(i, dest.name) for i in range(200, 300)]).items():
            expected[p] = max(expected.get(p, 0), o)
        wait_until(lambda: _scalar(fresh_pg_dsn, "SELECT coalesce(sum(next_offset), 0) FROM clinstream_sink_offsets")
                   == sum(expected.values()), 30, "offsets at the end")
        assert rt.runner.stats.retries > retries_before, "the dropped connection should have cost a retry"

    assert _scalar(fresh_pg_dsn, "SELECT count(*) FROM events") == 300
    assert _scalar(fresh_pg_dsn, "SELECT count(*) FROM write_log") == 300, "a retried batch was applied twice"
    assert rt.result.delivered == 300
