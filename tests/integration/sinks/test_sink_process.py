"""The sink as a process: `python -m connectors.sinks.runner`, killed with SIGKILL mid-run and restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson
import psycopg
import pytest
import yaml

from connectors.sinks.registry import create_sink
from connectors.sinks.runner import sink_main
from tests.integration.sinks.conftest import Dest
from tests.support.events import make_event, produce, wait_until
from topology.broker import free_port
from topology.model import SinkSpec

REPO = Path(__file__).resolve().parents[3]
N = 3000


def _topology(tmp_path: Path, dest: str, sink: dict[str, object]) -> Path:
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump({"name": "sinktest", "destinations": [{"name": dest, "sink": sink}]}))
    return path


def _spawn(topology: Path, dest: Dest, group: str) -> subprocess.Popen[str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "KAFKA_SESSION_TIMEOUT_MS": "6000",
           "CLINSTREAM_OPS_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "connectors.sinks.runner", "--topology", str(topology), "--destination", dest.name,
         "--bootstrap", dest.bootstrap, "--group-id", group, "--batch-size", "100", "--log-level", "WARNING"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    proc.ops_port = port  # type: ignore[attr-defined]
    return proc


def _ready(proc: subprocess.Popen[str]) -> bool:
    """The sink process's own /readyz: it has started consuming (so it also handles SIGTERM)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{proc.ops_port}/readyz", timeout=1) as resp:  # type: ignore[attr-defined]
            return resp.status == 200
    except OSError:
        return False


def _scalar(dsn: str, query: str) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute(query).fetchone()[0])  # type: ignore[index]


def _feeder(dest: Dest, expected: dict[int, int]) -> threading.Thread:
    """Produce N events in chunks while the sink runs, so the kill lands mid-stream."""

    def feed() -> None:
        for start in range(0, N, 100):
            chunk = [make_event(i, dest.name) for i in range(start, start + 100)]
            for p, o in produce(dest.bootstrap, dest.topic, chunk, key=lambda i: f"k{i}".encode()).items():
                expected[p] = max(expected.get(p, 0), o)
            time.sleep(0.05)

    return threading.Thread(target=feed, daemon=True)


def test_sigkill_mid_run_then_restart_delivers_each_event_exactly_once(
    dest: Dest, fresh_pg_dsn: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    topo = _topology(tmp_path, dest.name, {"kind": "postgres", "options": {"dsn": fresh_pg_dsn, "table": "events"}})
    # Create the tables, then a witness trigger that logs every row write: an event written twice
    # (a redelivery after the crash) would show up as a second log line even though the upsert hides it.
    sink = create_sink(SinkSpec(kind="postgres", options={"dsn": fresh_pg_dsn, "table": "events"}), dest.name)
    sink.start()
    sink.stop()
    with psycopg.connect(fresh_pg_dsn) as conn:
        conn.execute("CREATE TABLE write_log (event_id text NOT NULL)")
        conn.execute("CREATE FUNCTION log_write() RETURNS trigger LANGUAGE plpgsql AS $$"
                     " BEGIN INSERT INTO write_log VALUES (NEW.event_id); RETURN NEW; END $$")
        conn.execute("CREATE TRIGGER log_write AFTER INSERT OR UPDATE ON events"
                     " FOR EACH ROW EXECUTE FUNCTION log_write()")

    expected: dict[int, int] = {}
    feeder = _feeder(dest, expected)
    first = _spawn(topo, dest, unique_name("g"))
    try:
        feeder.start()
        wait_until(lambda: first.poll() is None and _scalar(fresh_pg_dsn, "SELECT count(*) FROM write_log") >= 300,
                   40, "the first sink process to deliver some rows")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL
    killed_at = _scalar(fresh_pg_dsn, "SELECT count(*) FROM events")
    assert 0 < killed_at, "the kill must land after some deliveries"
    feeder.join(60)
    assert sum(expected.values()) == N

    # The killed member never left its group (it may stay stuck on the embedded broker): new group id.
    second = _spawn(topo, dest, unique_name("g"))
    try:
        wait_until(
            lambda: second.poll() is None and _ready(second) and _scalar(
                fresh_pg_dsn, "SELECT coalesce(sum(next_offset), 0) FROM clinstream_sink_offsets") == N,
            60, "the restarted sink to reach the end of the topic",
        )
        second.send_signal(signal.SIGTERM)
        _out, err = second.communicate(timeout=30)
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 0, err
    assert f"delivered={N - killed_at} " in err, (killed_at, err)

    assert _scalar(fresh_pg_dsn, "SELECT count(*) FROM events") == N
    assert _scalar(fresh_pg_dsn, "SELECT count(DISTINCT event_id) FROM write_log") == N
    assert _scalar(fresh_pg_dsn, "SELECT count(*) FROM write_log") == N, "some event was written twice"
    with psycopg.connect(fresh_pg_dsn) as conn:
        stored = dict(conn.execute("SELECT partition, next_offset FROM clinstream_sink_offsets").fetchall())
    assert stored == expected


def test_sink_main_config_error_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    topo = _topology(tmp_path, "ehr", {"kind": "postgres", "options": {"dsn": "postgresql://u@127.0.0.1:1/x",
                                                                       "tabel": "events"}})
    rc = sink_main(["--topology", str(topo), "--destination", "ehr", "--bootstrap", "127.0.0.1:1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "sink.options.tabel" in err and "ehr" in err

    rc = sink_main(["--topology", str(topo), "--destination", "nope", "--bootstrap", "127.0.0.1:1"])
    assert rc == 2 and "no destination named 'nope'" in capsys.readouterr().err


def _ndjson_committed(root: Path, topic: str) -> dict[int, int]:
    """offsets.json is replaced atomically, so it can be read while the sink writes."""
    committed = {}
    for commit in (root / topic).glob("p*/offsets.json"):
        data = orjson.loads(commit.read_bytes())
        committed[int(data["partition"])] = int(data["next_offset"])
    return committed


def _ndjson_ids(root: Path, topic: str) -> list[str]:
    return [orjson.loads(line)["event_id"] for f in sorted((root / topic).glob("p*/*.ndjson"))
            for line in f.read_bytes().splitlines() if line]


def test_ndjson_sink_process_sigkill_and_restart(
    dest: Dest, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    topo = _topology(tmp_path, dest.name, {"kind": "ndjson", "options": {"directory": str(out),
                                                                         "roll_bytes": 200_000}})
    expected: dict[int, int] = {}
    feeder = _feeder(dest, expected)
    first = _spawn(topo, dest, unique_name("g"))
    try:
        feeder.start()
        wait_until(lambda: first.poll() is None and sum(_ndjson_committed(out, dest.topic).values()) >= 300,
                   40, "the first sink process to commit some lines")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    committed_at_kill = sum(_ndjson_committed(out, dest.topic).values())
    feeder.join(60)
    assert sum(expected.values()) == N

    second = _spawn(topo, dest, unique_name("g"))
    try:
        wait_until(lambda: second.poll() is None and _ready(second)
                   and _ndjson_committed(out, dest.topic) == expected,
                   60, "the restarted sink to commit everything")
        second.send_signal(signal.SIGTERM)
        _out, err = second.communicate(timeout=30)
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 0, err
    assert f"delivered={N - committed_at_kill} " in err, (committed_at_kill, err)
    ids = _ndjson_ids(out, dest.topic)
    assert len(ids) == N and len(set(ids)) == N, "every event exactly once in the files"
