"""The walking skeleton end to end: MLLP in -> Kafka -> agents -> Postgres (+ NDJSON) out."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import orjson
import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from connectors.sources.mllp.client import MllpClient
from schemas import headers as H
from schemas.envelope import decode_event
from schemas.hl7v2.ack import ack_code_of
from tests.support.pipeline import Pipeline, adt_message, e2e_topology, wait_until
from tests.support.topics import read_all

pytestmark = pytest.mark.timeout(420)


async def send_all(port: int, messages: list[bytes], connections: int = 4) -> list[str]:
    codes: list[str] = []

    async def run(chunk: list[bytes]) -> None:
        async with MllpClient("127.0.0.1", port) as client:
            for m in chunk:
                codes.append(ack_code_of(await client.send(m))[0])

    await asyncio.gather(*(run(messages[i::connections]) for i in range(connections)))
    return codes


def pg_rows(dsn: str, table: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        try:
            total, distinct = conn.execute(f"SELECT count(*), count(DISTINCT event_id) FROM {table}").fetchone()
        except psycopg.errors.UndefinedTable:
            return 0, 0
    return int(total), int(distinct)


def ndjson_ids(directory: Path) -> list[str]:
    import orjson

    lines = [line for f in directory.glob("**/*.ndjson") for line in f.read_bytes().splitlines()]
    return [orjson.loads(line)["event_id"] for line in lines if line.strip()]


def make_pipeline(e2e_bootstrap: str, pg_dsn: str, tmp_path: Path, unique_name, prefix: str = "p") -> Pipeline:
    """A pipeline with a Postgres (``<name>-ehr``) and an NDJSON (``<name>-billing``) destination."""
    name = unique_name(prefix).replace("_", "-")[:24].rstrip("-")
    p = Pipeline(e2e_bootstrap, tmp_path / "run", e2e_topology(name, pg_dsn, tmp_path / "billing"))
    p.pg_dsn = pg_dsn  # type: ignore[attr-defined]
    p.ndjson_dir = tmp_path / "billing"  # type: ignore[attr-defined]
    return p


@pytest.fixture
def pipeline(e2e_bootstrap: str, fresh_pg_dsn: str, tmp_path: Path, unique_name) -> Pipeline:
    p = make_pipeline(e2e_bootstrap, fresh_pg_dsn, tmp_path, unique_name)
    yield p
    p.stop()


def _dests(p: Pipeline) -> tuple[str, str, str]:
    ehr, billing = (d["name"] for d in p.topology["destinations"])
    table = p.topology["destinations"][0]["sink"]["options"]["table"]
    return ehr, billing, table


def test_n_messages_in_n_rows_out(pipeline: Pipeline):
    n = 120
    ehr, billing, table = _dests(pipeline)
    port = pipeline.start_source()
    pipeline.start_worker()
    pipeline.start_sink(ehr)
    pipeline.start_sink(billing)
    messages = [adt_message(i, trigger=("A01", "A04", "A08")[i % 3]) for i in range(n)]
    codes = asyncio.run(send_all(port, messages))
    assert codes == ["AA"] * n

    done = wait_until(lambda: pg_rows(pipeline.pg_dsn, table)[0] >= n, 240)
    assert done, f"rows={pg_rows(pipeline.pg_dsn, table)}\n{pipeline.logs()}"
    # exactly N rows, N records on the destination topic, and the billing filter (A01/A04 only)
    assert pg_rows(pipeline.pg_dsn, table) == (n, n)
    dest = [m for m in read_all(pipeline.bootstrap, f"dest.{ehr}", expect=n)
            if H.as_dict(m.headers()).get(H.SOURCE) == pipeline.source_name]
    assert len(dest) == n
    expected_billing = sum(1 for i in range(n) if i % 3 != 2)
    assert wait_until(lambda: len(ndjson_ids(pipeline.ndjson_dir)) >= expected_billing, 60)
    ids = ndjson_ids(pipeline.ndjson_dir)
    assert len(ids) == len(set(ids)) == expected_billing
    print(f"\ne2e: sent={n} acked={codes.count('AA')} postgres_rows={n} billing_records={len(ids)}")


def test_identify_and_route_workers_side_by_side_deliver_every_event_once(pipeline: Pipeline):
    """``run worker --role identify`` and ``--role route`` as two processes: the same rows as one worker,
    and the route worker's consent table on the changelog topic a single worker would use."""
    n = 90
    ehr, _billing, table = _dests(pipeline)
    port = pipeline.start_source()
    pipeline.start_worker("identify")
    pipeline.start_worker("route")
    pipeline.start_sink(ehr)
    messages = [adt_message(i, trigger=("A01", "A04", "A08")[i % 3]) for i in range(n)]
    assert asyncio.run(send_all(port, messages)) == ["AA"] * n

    done = wait_until(lambda: pg_rows(pipeline.pg_dsn, table)[0] >= n, 240)
    assert done, f"rows={pg_rows(pipeline.pg_dsn, table)}\n{pipeline.logs()}"
    assert pg_rows(pipeline.pg_dsn, table) == (n, n)
    delivered = [decode_event(m.value()) for m in read_all(pipeline.bootstrap, f"dest.{ehr}", expect=n)
                 if H.as_dict(m.headers()).get(H.SOURCE) == pipeline.source_name]
    assert len(delivered) == n and all(e["patient"]["euid"] for e in delivered)
    assert all(e["lineage"]["stages"] == ["normalize", "dedupe", "identity"] for e in delivered), delivered[0]
    topics = set(AdminClient({"bootstrap.servers": pipeline.bootstrap}).list_topics(timeout=10).topics)
    app_id = pipeline.worker_app_id
    assert f"{app_id}-consent-state-changelog" in topics, sorted(t for t in topics if app_id in t)
    assert f"{app_id}-route-consent-state-changelog" not in topics
    assert f"{app_id}-dedupe-seen-changelog" in topics
    assert pipeline.alive() == {k: True for k in pipeline.procs}, pipeline.logs()


def test_a_worker_joining_the_group_mid_run_delivers_every_event_once(pipeline: Pipeline):
    """Two workers of one group over two partitions: the second joins while the first is busy. The
    rebalance moves a partition with a batch in hand and fetches waiting in the agents' inboxes:
    every event still reaches Postgres exactly once. (A member leaving mid-run stalled the remaining
    worker once in ~15 loaded runs; see the 2026-12-04 session note, not yet diagnosed.)"""
    n = 240
    ehr, _billing, table = _dests(pipeline)
    port = pipeline.start_source()
    pipeline.start_worker()
    pipeline.start_sink(ehr)
    messages = [adt_message(i, trigger=("A01", "A04", "A08")[i % 3]) for i in range(n)]
    half = n // 2
    assert asyncio.run(send_all(port, messages[:half])) == ["AA"] * half
    assert wait_until(lambda: pg_rows(pipeline.pg_dsn, table)[0] > 0, 180), pipeline.logs()
    pipeline.start_worker(key="worker-2")  # joins: the group rebalances while records flow
    assert asyncio.run(send_all(port, messages[half:])) == ["AA"] * (n - half)

    done = wait_until(lambda: pg_rows(pipeline.pg_dsn, table)[0] >= n, 240)
    assert done, f"rows={pg_rows(pipeline.pg_dsn, table)}\n{pipeline.logs()}"
    time.sleep(2)  # anything delivered twice would land by now
    assert pg_rows(pipeline.pg_dsn, table) == (n, n)
    assert pipeline.alive() == {k: True for k in pipeline.procs}, pipeline.logs()


def test_sink_killed_mid_run_still_exactly_n_rows(pipeline: Pipeline):
    n = 200
    ehr, _billing, table = _dests(pipeline)
    port = pipeline.start_source()
    pipeline.start_worker()
    pipeline.start_sink(ehr)
    first = [adt_message(i) for i in range(n // 2)]
    assert asyncio.run(send_all(port, first)) == ["AA"] * len(first)
    assert wait_until(lambda: pg_rows(pipeline.pg_dsn, table)[0] > 0, 180), pipeline.logs()
    pipeline.kill(f"sink-{ehr}", signal.SIGKILL)
    rest = [adt_message(i) for i in range(n // 2, n)]
    assert asyncio.run(send_all(port, rest)) == ["AA"] * len(rest)
    pipeline.start_sink(ehr)
    assert wait_until(lambda: pg_rows(pipeline.pg_dsn, table)[0] >= n, 240), pipeline.logs()
    time.sleep(2)  # anything duplicated would show up now
    assert pg_rows(pipeline.pg_dsn, table) == (n, n)


def test_duplicates_and_a_broken_message(pipeline: Pipeline):
    ehr, _billing, table = _dests(pipeline)
    port = pipeline.start_source()
    pipeline.start_worker()
    pipeline.start_sink(ehr)
    messages = [adt_message(i) for i in range(20)]
    resent = messages[:5]
    codes = asyncio.run(send_all(port, [*messages, *resent, b"NOT HL7 AT ALL"], connections=1))
    assert codes == ["AA"] * 25 + ["AR"]
    assert wait_until(lambda: pg_rows(pipeline.pg_dsn, table)[0] >= 20, 180), pipeline.logs()
    time.sleep(3)
    assert pg_rows(pipeline.pg_dsn, table) == (20, 20)
    dedup = [m for m in read_all(pipeline.bootstrap, "dedup.events")
             if H.as_dict(m.headers()).get(H.SOURCE) == pipeline.source_name]
    assert len(dedup) == 20  # the 5 resends were dropped by the dedupe stage, not by the sink
    dlq = [m for m in read_all(pipeline.bootstrap, "dlq.ingest") if m.value() == b"NOT HL7 AT ALL"]
    assert len(dlq) == 1


def test_one_event_two_destinations_two_projections_two_disclosures(pipeline: Pipeline):
    ehr, billing, _table = _dests(pipeline)
    port = pipeline.start_source()
    pipeline.start_worker()
    assert asyncio.run(send_all(port, [adt_message(7, "A01")], connections=1)) == ["AA"]

    def records(topic: str) -> list:
        return [m for m in read_all(pipeline.bootstrap, topic)
                if H.as_dict(m.headers()).get(H.SOURCE) == pipeline.source_name]

    assert wait_until(lambda: records(f"dest.{ehr}") and records(f"dest.{billing}"), 120), pipeline.logs()
    e = decode_event(records(f"dest.{ehr}")[0].value())
    b = decode_event(records(f"dest.{billing}")[0].value())
    assert e["event_id"] == b["event_id"]
    pe = next(r for r in e["resources"] if r["resourceType"] == "Patient")
    pb = next(r for r in b["resources"] if r["resourceType"] == "Patient")
    assert "birthDate" in pe and "gender" in pe and pe["name"][0]["given"]
    assert set(pb) <= {"resourceType", "identifier", "name"} and set(pb["name"][0]) == {"family"}
    assert e["purpose"] == "TREAT" and b["purpose"] == "HPAYMT"
    audits = [orjson.loads(m.value()) for m in read_all(pipeline.bootstrap, "audit.disclosures")
              if H.as_dict(m.headers()).get(H.EVENT_ID) == e["event_id"]]
    assert len(audits) == 2 and all(a["resourceType"] == "AuditEvent" for a in audits)
