"""`clinstream bench mllp`: closed-loop load (send, wait for ACK) against the MLLP listener.

The listener runs in its own process (as in production) with its producer on the
cluster; the load generator runs here with C concurrent connections.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import time
from typing import Any

import orjson

from connectors.sources.mllp.client import MllpClient
from schemas.hl7v2.ack import ack_code_of
from topology.runtime import process_cpu_s


def sample_message(i: int) -> bytes:
    return (
        f"MSH|^~\\&|BENCH|HOSP|CLIN|HOSP|20240101120000||ADT^A01^ADT_A01|B{i:09d}|P|2.5\r"
        f"EVN|A01|20240101120000\r"
        f"PID|1||MRN{i % 50000:07d}^^^HOSP^MR||DOE^JANE^Q||19800101|F|||1 MAIN ST^^BOSTON^MA^02115\r"
        f"PV1|1|I|W^101^1^HOSP||||1234^SMITH^JOHN|||MED\r"
    ).encode()


def _serve(bootstrap: str, topic: str, port_q: Any, stop_ev: Any, cpu_s: Any) -> None:
    from connectors.sources.mllp.listener import MllpListener, MllpOptions
    from topology.settings import KafkaSettings

    async def main() -> None:
        lst = MllpListener("bench", topic, MllpOptions(port=0), KafkaSettings(bootstrap_servers=bootstrap))
        await lst.start()
        port_q.put(lst.port)
        while not stop_ev.is_set():  # the listener's CPU so far, for the load's CPU per message
            cpu_s.value = process_cpu_s()
            await asyncio.sleep(0.02)
        await lst.stop()

    asyncio.run(main())


async def _load(port: int, connections: int, messages: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    acked = 0
    per_conn = [messages // connections + (1 if c < messages % connections else 0) for c in range(connections)]

    async def conn(c: int, n: int) -> None:
        nonlocal errors, acked
        async with MllpClient("127.0.0.1", port) as client:
            for i in range(n):
                t = time.perf_counter()
                code, _ = ack_code_of(await client.send(sample_message(c * 10_000_000 + i)))
                latencies.append(time.perf_counter() - t)
                if code == "AA":
                    acked += 1
                else:
                    errors += 1

    start = time.perf_counter()
    await asyncio.gather(*(conn(c, n) for c, n in enumerate(per_conn)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0] * 1] * 99
    return {
        "msgs_per_s": round(acked / elapsed, 1),
        "p50_ms": round(q[49] * 1000, 2),
        "p99_ms": round(q[98] * 1000, 2),
        "acked": acked,
        "errors": errors,
        "connections": connections,
        "messages": messages,
        "seconds": round(elapsed, 2),
    }


def run_mllp_bench(bootstrap: str, connections: int, messages: int, warmup: int = 200) -> dict[str, Any]:
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"raw.hl7v2.bench-{int(time.time())}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(topic, 4, 1), NewTopic("dlq.ingest", 1, 1)]).values():
        try:
            fut.result(timeout=15)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    ctx = mp.get_context("spawn")
    port_q, stop_ev, cpu_s = ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    proc = ctx.Process(target=_serve, args=(bootstrap, topic, port_q, stop_ev, cpu_s), daemon=True)
    proc.start()
    try:
        port = port_q.get(timeout=60)
        asyncio.run(_load(port, min(connections, warmup), warmup))
        time.sleep(0.1)  # the listener's CPU sample catches up with the warm-up
        before = cpu_s.value
        result = asyncio.run(_load(port, connections, messages))
        time.sleep(0.1)
        # sampled every 20 ms: on a run of a few seconds the figure is within a few percent
        result["listener_cpu_ms_per_msg"] = round((cpu_s.value - before) * 1000 / max(result["acked"], 1), 4)
        return result
    finally:
        stop_ev.set()
        proc.join(timeout=15)
        if proc.is_alive():
            proc.kill()


def add_bench_mllp_parser(bench: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = bench.add_parser("mllp", help="closed-loop MLLP load against the listener (commit-then-ACK)")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=bench_mllp_command)


def bench_mllp_command(args: argparse.Namespace) -> int:
    from topology.broker import cluster

    with cluster() as settings:
        result = run_mllp_bench(settings.require_bootstrap(), args.connections, args.messages)
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        print(
            f"MLLP {result['connections']} connections, {result['acked']} acked, {result['errors']} errors: "
            f"{result['msgs_per_s']:.0f} msg/s, ACK latency p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
            f"listener CPU {result['listener_cpu_ms_per_msg']} ms/msg"
        )
    return 0 if result["errors"] == 0 else 1
