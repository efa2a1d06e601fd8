"""`clinstream demo`: the whole pipeline on one machine, fed the sample ADT messages over MLLP.

Starts (or uses) the cluster, applies the demo topology, runs the MLLP source,
the worker and one sink per destination as separate processes (as in
production), sends the sample ADT feed with a few duplicates and one broken
message, shows live per-stage counts and ends with a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from rich.console import Console
from rich.live import Live
from rich.table import Table

from topology.broker import free_port
from topology.model import CANONICAL, DEDUPED, IDENTIFIED, Topology, load_topology

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TOPOLOGY = REPO / "topology" / "examples" / "demo.yaml"
BROKEN_MESSAGE = b"THIS IS NOT HL7 - a sender bug the engine must answer with AR and keep on dlq.ingest"


def samples_dir(explicit: str | None = None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get("CLINSTREAM_SAMPLES_DIR")
    base = Path(env) if env else REPO.parent / "shared" / "data" / "hl7v2-samples"
    return base / "messages" if (base / "messages").is_dir() else base


def demo_feed(directory: Path, duplicates: int = 3) -> list[tuple[str, bytes]]:
    """ADT sample messages, the first few sent twice (a resending sender), and one broken message."""
    files = sorted(p for p in directory.glob("ADT*.hl7"))
    if not files:
        raise SystemExit(f"clinstream demo: no ADT*.hl7 samples in {directory} (set CLINSTREAM_SAMPLES_DIR)")
    feed = [(p.name, p.read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r").strip()) for p in files]
    feed += [(f"{name} (resent)", data) for name, data in feed[:duplicates]]
    feed.append(("broken-message", BROKEN_MESSAGE))
    return feed


class TopicCounter:
    """Records per topic, counted by reading them (the embedded broker's ListOffsets under-reports
    the high watermark when the last batch holds several records, so watermarks cannot be used)."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "clinstream-demo-monitor",
                                   "enable.auto.commit": False, "fetch.wait.max.ms": 100})
        md = self._consumer.list_topics(timeout=10)
        self._consumer.assign([TopicPartition(t, p, 0) for t in topics if t in md.topics
                               for p in md.topics[t].partitions])
        self.counts: dict[str, int] = dict.fromkeys(topics, 0)

    def poll(self) -> dict[str, int]:
        while True:
            batch = self._consumer.consume(5000, 0.05)
            for msg in batch:
                if msg.error() is None:
                    self.counts[msg.topic()] = self.counts.get(msg.topic(), 0) + 1
            if not batch:
                return dict(self.counts)

    def close(self) -> None:
        self._consumer.close()


@contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


def _spawn(args: list[str], env: dict[str, str], log: Path, stdout_pipe: bool = False,
           ops_port: int = 0) -> subprocess.Popen[bytes]:
    logf = log.open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "clinstream.cli", *args],
        env={**env, "CLINSTREAM_OPS_PORT": str(ops_port)},
        stdout=subprocess.PIPE if stdout_pipe else logf,
        stderr=logf,
        cwd=REPO,
    )


def _delivered(dest: Any, env: dict[str, str]) -> int | None:
    """Rows/records the destination's sink has durably written (read from the target itself)."""
    if dest.sink is None:
        return None
    if dest.sink.kind == "mllp":
        received = REPO / "var" / "demo-output" / dest.name / "received.hl7.ndjson"
        return sum(1 for _ in received.open("rb")) if received.exists() else 0
    if dest.sink.kind == "ndjson":
        directory = REPO / dest.sink.options.get("directory", f"var/demo-output/{dest.name}")
        return sum(
            sum(1 for _ in f.open("rb")) for f in directory.glob("**/*.ndjson")
        ) if directory.exists() else 0
    if dest.sink.kind == "postgres":
        import psycopg

        dsn = dest.sink.options.get("dsn") or env.get("CLINSTREAM_PG_DSN")
        table = dest.sink.options.get("table", dest.name.replace("-", "_"))
        try:
            with psycopg.connect(dsn, connect_timeout=3) as conn:
                row = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()  # noqa: S608 - name from topology
                return int(row[0]) if row else 0
        except psycopg.Error:
            return 0
    return None


@contextmanager
def demo_database(env: dict[str, str], workdir: Path, console: Console) -> Iterator[None]:
    """CLINSTREAM_PG_DSN if set; else a throw-away local PostgreSQL (binaries on this machine), if any."""
    if env.get("CLINSTREAM_PG_DSN"):
        yield
        return
    from connectors.sinks.pg_local import PostgresUnavailable, start_local_postgres

    try:
        server = start_local_postgres(workdir)
    except PostgresUnavailable as exc:
        console.print(f"[yellow]note:[/] no PostgreSQL for the demo ({str(exc)[:120]}...)")
        yield
        return
    env["CLINSTREAM_PG_DSN"] = server.dsn
    console.print(f"PostgreSQL (throw-away, local binaries) at {server.dsn}")
    try:
        yield
    finally:
        server.stop()


@contextmanager
def legacy_receivers(topo: Topology, workdir: Path, console: Console) -> Iterator[Topology]:
    """Stand up the 'legacy system' at the far end of each MLLP sink: a receiver that ACKs and files messages."""
    from connectors.sinks.mllp_receiver import MllpAckReceiver, ReceiverThread

    dests, threads = [], []
    for d in topo.destinations:
        if d.sink is not None and d.sink.kind == "mllp":
            out = workdir.parent / "demo-output" / d.name / "received.hl7.ndjson"
            out.parent.mkdir(parents=True, exist_ok=True)
            port = free_port()
            thread = ReceiverThread(MllpAckReceiver("127.0.0.1", port, out))
            thread.__enter__()
            threads.append(thread)
            console.print(f"legacy MLLP receiver for {d.name} on 127.0.0.1:{port} (files to {out})")
            d = d.model_copy(update={"sink": d.sink.model_copy(
                update={"options": {**d.sink.options, "host": "127.0.0.1", "port": port}})})
        dests.append(d)
    try:
        yield topo.model_copy(update={"destinations": dests})
    finally:
        for thread in threads:
            thread.__exit__(None, None, None)


def _topology_for_demo(topo: Topology, env: dict[str, str], workdir: Path) -> tuple[Topology, Path, list[str]]:
    """Without a database, Postgres destinations fall back to NDJSON files (and say so)."""
    notes: list[str] = []
    dests = []
    for d in topo.destinations:
        if d.sink is not None and d.sink.kind == "postgres" and not (
            d.sink.options.get("dsn") or env.get("CLINSTREAM_PG_DSN")
        ):
            sink = d.sink.model_copy(update={"kind": "ndjson",
                                             "options": {"directory": f"var/demo-output/{d.name}"}})
            d = d.model_copy(update={"sink": sink})
            notes.append(f"{d.name}: no CLINSTREAM_PG_DSN set, delivering to NDJSON files instead of Postgres")
        dests.append(d)
    topo = topo.model_copy(update={"destinations": dests})
    path = workdir / "topology.json"
    path.write_text(json.dumps(topo.model_dump(mode="json"), indent=2))
    return topo, path, notes


async def _send_feed(port: int, feed: list[tuple[str, bytes]], connections: int = 4) -> dict[str, int]:
    from connectors.sources.mllp.client import MllpClient
    from schemas.hl7v2.ack import ack_code_of

    codes: dict[str, int] = {}
    chunks = [feed[i::connections] for i in range(connections)]

    async def run(chunk: list[tuple[str, bytes]]) -> None:
        async with MllpClient("127.0.0.1", port) as client:
            for _name, data in chunk:
                code, _ = ack_code_of(await client.send(data))
                codes[code] = codes.get(code, 0) + 1

    await asyncio.gather(*(run(c) for c in chunks if c))
    return codes


def run_demo(args: argparse.Namespace) -> int:
    from topology.broker import cluster
    from topology.plan import ensure_topics

    console = Console()
    topo_path = Path(args.topology) if args.topology else DEFAULT_TOPOLOGY
    topo = load_topology(topo_path)
    workdir = REPO / "var" / "demo"
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.rmtree(REPO / "var" / "demo-output", ignore_errors=True)
    workdir.mkdir(parents=True)
    feed = demo_feed(samples_dir(args.samples))

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with cluster() as settings, demo_database(env, workdir, console), \
            legacy_receivers(topo, workdir, console) as topo:
        bootstrap = settings.require_bootstrap()
        env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
        topo, topo_file, notes = _topology_for_demo(topo, env, workdir)
        for note in notes:
            console.print(f"[yellow]note:[/] {note}")
        ensure_topics(topo, AdminClient(settings.librdkafka()))
        kind = "cluster" if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else "embedded in-memory broker"
        console.print(f"[bold]clinstream demo[/] on {bootstrap} ({kind})")
        ops: dict[str, int] = {"source": free_port(), "worker": free_port()}
        with processes() as procs:
            source = _spawn(["run", "source", "--topology", str(topo_file)], env, workdir / "source.log", True,
                            ops_port=ops["source"])
            procs.append(source)
            procs.append(_spawn(["run", "worker", "--topology", str(topo_file), "--data-dir",
                                 str(workdir / "worker"), "--app-id", f"clinstream-demo-{int(time.time())}"],
                                env, workdir / "worker.log", ops_port=ops["worker"]))
            for d in topo.destinations:
                if d.sink is not None:
                    ops[f"sink {d.name}"] = free_port()
                    procs.append(_spawn(["run", "sink", "--topology", str(topo_file), "--destination", d.name,
                                         "--group-id", f"clinstream-demo-sink-{d.name}-{int(time.time())}"],
                                        env, workdir / f"sink-{d.name}.log", ops_port=ops[f"sink {d.name}"]))
            console.print("metrics: " + ", ".join(f"{k} http://127.0.0.1:{p}/metrics" for k, p in ops.items()))
            assert source.stdout is not None
            line = source.stdout.readline().decode()
            if not line.startswith("{"):
                console.print(f"[red]source did not start[/]; see {workdir / 'source.log'}")
                return 1
            ports = {name: h["port"] for name, h in json.loads(line)["ready"].items()}
            port = next(iter(ports.values()))
            console.print(f"MLLP source listening on 127.0.0.1:{port}; sending {len(feed)} messages "
                          f"({len(feed) - 4} distinct ADT samples, 3 resent, 1 broken)")
            codes = asyncio.run(_send_feed(port, feed))
            summary = _watch(console, topo, bootstrap, env, expect_raw=codes.get("AA", 0), procs=procs)
            _print_summary(console, topo, codes, summary, len(feed))
            _print_live_metrics(console, ops["worker"])
            ok = codes.get("AA", 0) == len(feed) - 1 and codes.get("AR", 0) == 1 and summary["complete"]
            if args.keep_running:
                console.print(f"[bold]still serving[/]: MLLP on 127.0.0.1:{port}, "
                              f"KAFKA_BOOTSTRAP_SERVERS={bootstrap}. Ctrl-C stops.")
                with suppress(KeyboardInterrupt):
                    while all(p.poll() is None for p in procs):
                        time.sleep(1)
            return 0 if ok else 1


def _watch(console: Console, topo: Topology, bootstrap: str, env: dict[str, str], expect_raw: int,
           procs: list[subprocess.Popen[bytes]], timeout_s: float = 180.0) -> dict[str, Any]:
    stages = [*topo.raw_topics(), CANONICAL, DEDUPED, IDENTIFIED, *[d.topic for d in topo.destinations],
              "dlq.ingest", "dlq.normalize", "dlq.dedupe", "dlq.identity", "dlq.route", "audit.disclosures"]
    counter = TopicCounter(bootstrap, stages)
    deadline = time.monotonic() + timeout_s
    stable_since: float | None = None
    last: tuple[Any, ...] = ()
    counts: dict[str, int] = {}
    delivered: dict[str, int | None] = {}
    try:
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            while time.monotonic() < deadline:
                counts = counter.poll()
                delivered = {d.name: _delivered(d, env) for d in topo.destinations}
                table = Table(title="clinstream: records per stage (live)")
                table.add_column("topic / sink")
                table.add_column("records", justify="right")
                for t in stages:
                    table.add_row(t, str(counts[t]))
                for name, n in delivered.items():
                    table.add_row(f"sink → {name}", "-" if n is None else str(n))
                live.update(table)
                snapshot = (tuple(counts.values()), tuple(delivered.values()))
                sinks_caught_up = all(
                    n is None or n >= counts[f"dest.{name}"] for name, n in delivered.items()
                )
                progressed = sum(counts[t] for t in topo.raw_topics()) >= expect_raw
                if snapshot == last and progressed and sinks_caught_up and counts[CANONICAL] > 0:
                    stable_since = stable_since or time.monotonic()
                    if time.monotonic() - stable_since > 3:
                        break
                else:
                    stable_since = None
                last = snapshot
                if any(p.poll() is not None for p in procs):
                    console.print("[red]a pipeline process exited early[/]; see var/demo/*.log")
                    break
                time.sleep(0.5)
    finally:
        counter.close()
    complete = stable_since is not None and all(p.poll() is None for p in procs)
    return {"counts": counts, "delivered": delivered, "complete": complete}


def _print_live_metrics(console: Console, port: int) -> None:
    """A few figures scraped from the worker's own /metrics endpoint (proof it is live)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as resp:
            text = resp.read().decode()
    except OSError as exc:
        console.print(f"[yellow]worker /metrics not reachable: {exc}[/]")
        return
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("clinstream_stage_records_in_total", "clinstream_stage_records_dropped_total",
                               "clinstream_mpi_decisions_total", "clinstream_disclosures_total"):
                label = sample.labels.get("stage") or sample.labels.get("band") or sample.labels.get("destination")
                reason = sample.labels.get("reason")
                key = f"{sample.name}{{{label}{', ' + reason if reason else ''}}}"
                totals[key] = totals.get(key, 0) + sample.value
    t = Table(title=f"live worker metrics (http://127.0.0.1:{port}/metrics)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in sorted(totals.items()):
        t.add_row(k, f"{v:.0f}")
    console.print(t)


def _print_summary(console: Console, topo: Topology, codes: dict[str, int], summary: dict[str, Any],
                   sent: int) -> None:
    counts, delivered = summary["counts"], summary["delivered"]
    t = Table(title="clinstream demo summary")
    t.add_column("what")
    t.add_column("count", justify="right")
    t.add_column("where")
    t.add_row("sent over MLLP", str(sent), "")
    t.add_row("received (persisted to Kafka, ACK AA)", str(codes.get("AA", 0)), ", ".join(topo.raw_topics()))
    t.add_row("rejected (ACK AR/AE)", str(codes.get("AR", 0) + codes.get("AE", 0)), "dlq.ingest")
    t.add_row("normalized to FHIR R4", str(counts.get(CANONICAL, 0)), CANONICAL)
    t.add_row("after dedupe (duplicates dropped)", str(counts.get(DEDUPED, 0)), DEDUPED)
    t.add_row("identified (EUID assigned)", str(counts.get(IDENTIFIED, 0)), IDENTIFIED)
    t.add_row("DLQ (normalize/dedupe/identity/route)",
              str(sum(counts.get(f"dlq.{s}", 0) for s in ("normalize", "dedupe", "identity", "route"))), "dlq.*")
    for d in topo.destinations:
        where = ""
        if d.sink is not None:
            where = {
                "ndjson": str(REPO / d.sink.options.get("directory", "")),
                "postgres": f"postgres table {d.sink.options.get('table', d.name)}",
                "mllp": f"HL7 v2 over MLLP to 127.0.0.1:{d.sink.options.get('port')}",
            }.get(d.sink.kind, d.sink.kind)
        t.add_row(f"delivered → {d.name} ({d.purpose})",
                  f"{counts.get(d.topic, 0)} on topic / {delivered.get(d.name)} in sink", where)
    t.add_row("disclosures recorded", str(counts.get("audit.disclosures", 0)), "audit.disclosures")
    console.print(t)
    console.print("[green]pipeline complete[/]" if summary["complete"] else "[red]pipeline did not settle[/]")
