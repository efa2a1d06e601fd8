"""``clinstream bench consume``: what the worker's Faust consumer costs per record, three ways.

The worker consumes every pipeline message twice through Faust (``raw.*`` and
``identified.events``). This bench produces bench-feed messages to one topic, then
alternates child processes that each run one pass-through batching agent (the worker's batch
settings, nothing else) over them, through the worker transport: an event per record with
Faust's per-record delivery race (``faust``) and with the lean delivery (``lean``), both
batched by ``take_ready_events``; and whole fetches through a fetch inbox (``fetch``, what the
worker runs: ``streams.transport``, ``take_ready_batches``). Each reports process CPU and wall
time from its first batch to its last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from topology.runtime import process_cpu_s

__all__ = ["add_bench_consume_parser", "run_consume_bench"]

_MODES = ("faust", "lean", "fetch")  # the worker: fetch


def _child(bootstrap: str, topic: str, records: int, mode: str, out: str) -> None:
    import faust

    from streams.app import AgentBatchSettings
    from streams.batching import take_ready_batches, take_ready_events
    from streams.transport import fetch_inbox, install_worker_transport
    from topology.broker import fetch_wait_ms
    from topology.settings import KafkaSettings

    settings = KafkaSettings(bootstrap_servers=bootstrap)
    batch = AgentBatchSettings()
    app = faust.App(f"bench-consume-{mode}-{time.time_ns()}", **settings.faust_broker_kwargs(), store="memory://",
                    datadir=str(Path(out).parent / f"{mode}-data"),  # beside the result, in the bench's temp dir
                    consumer_auto_offset_reset="earliest", web_enabled=False, topic_disable_leader=True,
                    stream_buffer_maxsize=8192, broker_commit_interval=1.0)
    install_worker_transport(app, fetch_wait_ms(settings), lean_delivery=mode == "lean")
    source = app.topic(topic, key_type=bytes, value_type=bytes, value_serializer="raw", key_serializer="raw")
    seen: dict[str, Any] = {"n": 0, "first": None}
    inbox = fetch_inbox(app, [topic], batch.inbox_records) if mode == "fetch" else None

    def batches(stream: faust.StreamT[bytes]) -> Any:
        within, idle = batch.within_ms / 1000, batch.idle_ms / 1000
        if inbox is not None:
            return take_ready_batches(stream, inbox, batch.size, within, idle)
        return take_ready_events(stream, batch.size, within, idle)

    @app.agent(source)
    async def count(stream: faust.StreamT[bytes]) -> None:
        async for events in batches(stream):
            if seen["first"] is None:  # from the first batch on: no start-up, no group join
                seen["first"] = (time.perf_counter(), process_cpu_s(), len(events))
            seen["n"] += len(events)
            if seen["n"] >= records:
                wall0, cpu0, first = seen["first"]
                n = seen["n"] - first
                Path(out).write_text(json.dumps({
                    "mode": mode, "records": n, "records_per_s": n / (time.perf_counter() - wall0),
                    "cpu_us_per_record": (process_cpu_s() - cpu0) / n * 1e6}))
                os._exit(0)  # the measurement is written; a graceful Faust shutdown takes seconds

    worker = faust.Worker(app, loglevel="error", quiet=True)
    worker.spinner = None
    worker.execute_from_commandline()


def run_consume_bench(records: int = 30000, rounds: int = 3, timeout_s: float = 300.0) -> dict[str, Any]:
    from confluent_kafka import Producer

    from streams.bench import bench_message
    from topology.broker import cluster

    results: dict[str, list[dict[str, Any]]] = {m: [] for m in _MODES}
    with cluster() as settings, tempfile.TemporaryDirectory() as tmp:
        bootstrap = settings.require_bootstrap()
        topic = f"bench.consume.{time.time_ns()}"
        producer = Producer(settings.librdkafka_producer(**{"linger.ms": 20}))
        for i in range(records + 2000):  # the first batch is not measured
            while True:
                try:
                    producer.produce(topic, bench_message(i, "consume"), key=b"p%d" % (i % 97))
                    break
                except BufferError:
                    producer.poll(0.05)
        undelivered = producer.flush(60)
        del producer  # no client left connected when the embedded broker stops
        if undelivered:
            raise RuntimeError(f"bench consume: {undelivered} feed records not delivered to the broker")
        for _ in range(rounds):
            for mode in _MODES:  # alternating, so a slow moment of the machine hits both
                out = Path(tmp) / f"{mode}.json"
                out.unlink(missing_ok=True)
                proc = subprocess.run([sys.executable, "-m", "streams.consume_bench", "--child", bootstrap, topic,
                                       str(records), mode, str(out)], capture_output=True, text=True,
                                      timeout=timeout_s)
                if not out.exists():
                    raise RuntimeError(f"bench consume: the {mode} consumer reported nothing "
                                       f"(exit {proc.returncode}): {proc.stderr[-2000:]}")
                results[mode].append(json.loads(out.read_text()))
    external = bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    summary: dict[str, Any] = {"records": records, "rounds": rounds, "broker": "external" if external else "embedded"}
    for mode in _MODES:
        runs = results[mode]
        summary[f"{mode}_cpu_us_per_record"] = round(statistics.median(r["cpu_us_per_record"] for r in runs), 1)
        summary[f"{mode}_records_per_s"] = round(statistics.median(r["records_per_s"] for r in runs))
        summary[f"{mode}_runs"] = runs
    summary["cpu_ratio_faust_over_lean"] = round(summary["faust_cpu_us_per_record"] /
                                                 summary["lean_cpu_us_per_record"], 2)
    summary["cpu_ratio_lean_over_fetch"] = round(summary["lean_cpu_us_per_record"] /
                                                 summary["fetch_cpu_us_per_record"], 2)
    return summary


def add_bench_consume_parser(bench: Any) -> None:
    p = bench.add_parser("consume", help="the worker's Faust consumer: CPU us per record, three deliveries")
    p.add_argument("--records", type=int, default=30000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=bench_consume_command)


def bench_consume_command(args: argparse.Namespace) -> int:
    result = run_consume_bench(args.records, args.rounds)
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
        return 0
    print(f"consume ({result['records']} records, {result['rounds']} alternating rounds, medians): "
          f"Faust's delivery {result['faust_cpu_us_per_record']} us CPU/record, "
          f"{result['faust_records_per_s']:,} records/s; lean delivery {result['lean_cpu_us_per_record']} us, "
          f"{result['lean_records_per_s']:,} records/s ({result['cpu_ratio_faust_over_lean']}x); "
          f"whole fetches (the worker's) {result['fetch_cpu_us_per_record']} us, "
          f"{result['fetch_records_per_s']:,} records/s ({result['cpu_ratio_lean_over_fetch']}x less than lean)")
    return 0


if __name__ == "__main__" and len(sys.argv) == 7 and sys.argv[1] == "--child":
    _child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6])
