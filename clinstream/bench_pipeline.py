"""`clinstream bench pipeline`: the whole pipeline on this machine, end to end.

MLLP -> normalize -> dedupe -> identity -> route -> Postgres sink, each part its
own process as in production, on the embedded broker (or KAFKA_BOOTSTRAP_SERVERS)
and a throw-away local PostgreSQL (or CLINSTREAM_PG_DSN).

1. Sustained throughput: C connections send N distinct ADT messages closed-loop;
   msgs/s = N / (first send -> N-th row committed in Postgres).
2. Latency at a fixed offered rate: messages paced at R msg/s (open loop);
   end-to-end latency per message = row ``delivered_at`` - envelope ``received_at``
   (both stamped on this machine's clock), p50/p99 over the paced run.
3. Peak RSS (VmHWM) summed over the broker and every clinstream process.
4. CPU milliseconds per message of each process over the sustained run (user +
   system time from /proc): robust where msgs/s is not, when something else
   shares the machine, and it says which part limits the whole. Beside it, how
   the machine's CPU time went over that run (busy, idle, stolen by the
   hypervisor): with 20% steal the processes had a fifth less CPU than without.
5. Where the paced run's latency goes, hop by hop (p50/p99 of each): ``source``
   (received_at -> raw record produced), ``worker`` (raw -> identified.events:
   normalize, dedupe, identity and the fetch before them), ``route`` (identified ->
   dest.*), ``sink`` (dest.* -> row delivered_at), from the producers' record
   timestamps (CreateTime, stamped at the produce call on this machine's clock).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import yaml

from clinstream.demo import _spawn, processes
from streams.bench import bench_message, bench_topology
from topology.broker import free_port
from topology.runtime import machine_cpu_shares, machine_cpu_ticks

if TYPE_CHECKING:
    from topology.model import Topology
    from topology.settings import KafkaSettings


def _rss_peak_mb(pids: dict[str, int]) -> dict[str, float]:
    """Peak resident set (VmHWM) of each named process, MB."""
    out: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out[name] = round(int(line.split()[1]) / 1024, 1)
        except OSError:
            continue
    return out


def _cpu_s(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds so far of each named process (fields 14 and 15 of /proc/PID/stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _rows(dsn: str, run: str | None = None) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        try:
            if run is None:
                row = conn.execute("SELECT count(*) FROM bench_ehr").fetchone()
            else:
                row = conn.execute("SELECT count(*) FROM bench_ehr WHERE event->>'source_message_id' LIKE %s",
                                   (f"{run}%",)).fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
    return int(row[0]) if row else 0


def _delivered(dsn: str, run: str) -> dict[str, tuple[float, float]]:
    """event id -> (received_at, delivered_at), epoch milliseconds, of every row of ``run``."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT event_id, EXTRACT(EPOCH FROM received_at) * 1000, EXTRACT(EPOCH FROM delivered_at) * 1000 "
            "FROM bench_ehr WHERE event->>'source_message_id' LIKE %s", (f"{run}%",)).fetchall()
    return {r[0]: (float(r[1]), float(r[2])) for r in rows}


async def _closed_loop(port: int, messages: list[bytes], connections: int) -> int:
    from connectors.sources.mllp.client import MllpClient
    from schemas.hl7v2.ack import ack_code_of

    acked = 0

    async def conn(chunk: list[bytes]) -> None:
        nonlocal acked
        async with MllpClient("127.0.0.1", port) as client:
            for m in chunk:
                if ack_code_of(await client.send(m))[0] == "AA":
                    acked += 1

    await asyncio.gather(*(conn(messages[i::connections]) for i in range(connections)))
    return acked


async def _paced(port: int, messages: list[bytes], rate: float, connections: int) -> int:
    """Open loop: message i is due at start + i/rate, whatever the ACK latency."""
    from connectors.sources.mllp.client import MllpClient
    from schemas.hl7v2.ack import ack_code_of

    start = time.perf_counter() + 0.2
    acked = 0

    async def conn(offset: int) -> None:
        nonlocal acked
        async with MllpClient("127.0.0.1", port) as client:
            for i in range(offset, len(messages), connections):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if ack_code_of(await client.send(messages[i]))[0] == "AA":
                    acked += 1

    await asyncio.gather(*(conn(c) for c in range(connections)))
    return acked


HOPS = ("source", "worker", "route", "sink")


def hop_latencies_ms(stamps: dict[str, tuple[float, ...]]) -> dict[str, dict[str, float]]:
    """p50/p99 of each hop over events that have every stamp.

    ``stamps`` maps an event id to (received_at, raw produced, identified produced, dest produced,
    delivered_at), epoch milliseconds; an event missing one of them is left out."""
    deltas: dict[str, list[float]] = {h: [] for h in HOPS}
    for times in stamps.values():
        if len(times) != len(HOPS) + 1:
            continue
        for i, hop in enumerate(HOPS):
            deltas[hop].append(times[i + 1] - times[i])
    out: dict[str, dict[str, float]] = {}
    for hop, values in deltas.items():
        if len(values) >= 2:
            q = statistics.quantiles(values, n=100)
            out[hop] = {"p50": round(q[49], 1), "p99": round(q[98], 1)}
    return out


def _hop_stamps(settings: KafkaSettings, topology: Topology,
                delivered: dict[str, tuple[float, float]]) -> dict[str, tuple[float, ...]]:
    """Per delivered event: received_at, the produce times of its raw, identified and dest records, delivered_at."""
    from schemas.headers import EVENT_ID, as_dict
    from streams.bench import BENCH_RAW_TOPIC
    from streams.topic_reader import read_topics
    from topology.model import IDENTIFIED

    topics = (BENCH_RAW_TOPIC, IDENTIFIED, topology.destinations[0].topic)
    produced: dict[str, dict[str, float]] = {t: {} for t in topics}
    for msg in read_topics(settings, topics, purpose="bench-hops"):
        event_id = as_dict(msg.headers()).get(EVENT_ID)
        if event_id in delivered:
            produced[str(msg.topic())].setdefault(event_id, float(msg.timestamp()[1]))  # the first copy
    out: dict[str, tuple[float, ...]] = {}
    for event_id, (received, done) in delivered.items():
        times = [received, *(produced[t].get(event_id) for t in topics), done]
        if all(t is not None for t in times):
            out[event_id] = tuple(t for t in times if t is not None)
    return out


def _wait_rows(dsn: str, target: int, run: str, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _rows(dsn, run) >= target:
            return time.perf_counter()
        time.sleep(0.05)
    raise TimeoutError(f"only {_rows(dsn, run)} of {target} rows after {timeout_s}s")


def run_pipeline_bench(messages: int, connections: int, offered_rate: float, paced_messages: int,
                       partitions: int, workers: int, route_workers: int = 0) -> dict[str, Any]:
    from confluent_kafka.admin import AdminClient

    from connectors.sinks.pg_local import start_local_postgres
    from topology.broker import EmbeddedBroker, cluster
    from topology.model import load_topology
    from topology.plan import ensure_topics

    workdir = Path(tempfile.mkdtemp(prefix="clinstream-bench-"))
    server = None
    dsn = os.environ.get("CLINSTREAM_PG_DSN")
    if not dsn:
        server = start_local_postgres(workdir)
        dsn = server.dsn
    try:
        with cluster() as settings:
            bootstrap = settings.require_bootstrap()
            topo_path = workdir / "topology.yaml"
            topo_path.write_text(yaml.safe_dump(bench_topology(dsn, partitions)))
            ensure_topics(load_topology(topo_path), AdminClient(settings.librdkafka()))
            env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "PYTHONUNBUFFERED": "1"}
            with processes() as procs:
                source = _spawn(["run", "source", "--topology", str(topo_path)], env, workdir / "source.log", True,
                                ops_port=free_port())
                procs.append(source)
                app_id = f"bench-worker-{int(time.time())}"
                # with route workers beside them, the workers run normalize, dedupe and identity only
                roles = [("worker", "identify" if route_workers else "all", workers),
                         ("route", "route", route_workers)]
                worker_names: list[str] = []
                for name, role, n in roles:
                    for w in range(n):
                        worker_names.append(f"{name}{w}")
                        procs.append(_spawn(["run", "worker", "--topology", str(topo_path), "--data-dir",
                                             str(workdir / worker_names[-1]), "--app-id", app_id, "--role", role],
                                            env, workdir / f"{worker_names[-1]}.log", ops_port=free_port()))
                procs.append(_spawn(["run", "sink", "--topology", str(topo_path), "--destination", "bench-ehr",
                                     "--group-id", f"bench-sink-{int(time.time())}"], env, workdir / "sink.log",
                                    ops_port=free_port()))
                assert source.stdout is not None
                ready = orjson.loads(source.stdout.readline())
                port = int(ready["ready"]["bench-feed"]["port"])
                # warm-up: group joins, table recovery, first batches
                warm = [bench_message(i, "W") for i in range(200)]
                asyncio.run(_closed_loop(port, warm, 4))
                _wait_rows(dsn, len(warm), "W", 180)
                # 1. sustained throughput
                batch = [bench_message(i, "T") for i in range(messages)]
                named = {"source": source.pid, **{name: procs[1 + i].pid for i, name in enumerate(worker_names)},
                         "sink": procs[-1].pid, **{f"broker{i}": pid for i, pid in enumerate(_broker_pids(bootstrap))}}
                cpu0, machine0 = _cpu_s(named), machine_cpu_ticks()
                t0 = time.perf_counter()
                acked = asyncio.run(_closed_loop(port, batch, connections))
                t_acked = time.perf_counter()
                t_done = _wait_rows(dsn, messages, "T", 600)
                cpu1, machine1 = _cpu_s(named), machine_cpu_ticks()
                # 2. latency at a fixed offered rate
                paced = [bench_message(i, "L") for i in range(paced_messages)]
                acked_paced = asyncio.run(_paced(port, paced, offered_rate, connections))
                _wait_rows(dsn, paced_messages, "L", 300)
                delivered = _delivered(dsn, "L")
                lat = sorted(done - received for received, done in delivered.values())
                rss = _rss_peak_mb(named)
                hops = hop_latencies_ms(_hop_stamps(settings, load_topology(topo_path), delivered))
            q = statistics.quantiles(lat, n=100)
            return {
                "msgs_per_s": round(messages / (t_done - t0), 1),
                "ingest_msgs_per_s": round(acked / (t_acked - t0), 1),
                "p50_ms": round(q[49], 1),
                "p99_ms": round(q[98], 1),
                "offered_rate": offered_rate,
                "rss_mb": round(sum(rss.values()), 1),
                "rss_mb_by_process": rss,
                "latency_by_hop_ms": hops,
                "cpu_ms_per_msg": {k: round((cpu1[k] - cpu0[k]) * 1000 / messages, 3) for k in cpu1 if k in cpu0},
                "machine_cpu_pct": machine_cpu_shares(machine0, machine1),
                "messages": messages,
                "paced_messages": paced_messages,
                "acked": acked + acked_paced,
                "connections": connections,
                "partitions": partitions,
                "workers": workers,
                "route_workers": route_workers,
                "broker": "embedded" if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else "external",
                "logs": str(workdir),
            }
    finally:
        if server is not None:
            server.stop()
        _ = EmbeddedBroker  # the embedded broker (if any) stops with cluster()


def _broker_pids(bootstrap: str) -> list[int]:
    """The embedded broker serving ``bootstrap`` (not another test's broker on the same machine)."""
    port = bootstrap.rsplit(":", 1)[-1].encode()
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"tansu" in cmd[0] and any(arg.endswith(b":" + port) for arg in cmd):
                out.append(int(d.name))
    return out


def add_bench_pipeline_parser(bench: Any) -> None:
    p = bench.add_parser("pipeline", help="end to end: MLLP -> agents -> Postgres; msgs/s, p50/p99, RSS")
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--offered-rate", type=float, default=1000.0)
    p.add_argument("--paced-messages", type=int, default=10000)
    p.add_argument("--partitions", type=int, default=None,
                   help="partitions per topic (default: one per worker; on the embedded broker every partition "
                        "a batch touches is a produce request of its own, about 1 ms of broker CPU)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--route-workers", type=int, default=0,
                   help="route workers beside the workers, which then run normalize, dedupe and identity only "
                        "(run worker --role); each is a process of its own")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=bench_pipeline_command)


def bench_pipeline_command(args: argparse.Namespace) -> int:
    result = run_pipeline_bench(args.messages, args.connections, args.offered_rate, args.paced_messages,
                                args.partitions or args.workers, args.workers, args.route_workers)
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        print(f"pipeline: {result['msgs_per_s']} msg/s sustained (ingest {result['ingest_msgs_per_s']} msg/s), "
              f"at {result['offered_rate']:.0f} msg/s offered: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms; "
              f"peak RSS {result['rss_mb']} MB (broker + clinstream processes)")
        hops = ", ".join(f"{hop} {v['p50']}/{v['p99']}" for hop, v in result["latency_by_hop_ms"].items())
        print(f"latency by hop, p50/p99 ms: {hops}")
        machine = result["machine_cpu_pct"]
        if machine:
            print(f"machine CPU over the sustained run: busy {machine['busy']}%, idle {machine['idle']}%, "
                  f"stolen by the hypervisor {machine['steal']}%")
    return 0
