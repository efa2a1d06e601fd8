"""An agent's batches on the broker: what is ready goes at once.

A Faust worker in a child process consumes a topic through ``streams.batching.take_ready_batches``
(whole fetches through a fetch inbox, as the worker does) or ``take_ready_events`` (an event per
record, what ``bench consume`` compares with) and logs each batch (its records and when it was
taken); the test produces bursts and reads the log."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from topology.broker import cluster

MAX, WITHIN_S, IDLE_S = 10, 8.0, 0.1


def _child(bootstrap: str, topic: str, log_path: str, how: str) -> None:
    import faust

    from streams.batching import take_ready_batches, take_ready_events
    from streams.transport import fetch_inbox, install_worker_transport
    from topology.broker import fetch_wait_ms
    from topology.settings import KafkaSettings

    settings = KafkaSettings(bootstrap_servers=bootstrap)
    app = faust.App(f"test-batching-{time.time_ns()}", **settings.faust_broker_kwargs(), store="memory://",
                    datadir=str(Path(log_path).parent / "data"), consumer_auto_offset_reset="earliest",
                    web_enabled=False, topic_disable_leader=True)
    install_worker_transport(app, fetch_wait_ms(settings))
    source = app.topic(topic, key_type=bytes, value_type=bytes, value_serializer="raw", key_serializer="raw")
    inbox = fetch_inbox(app, [topic], 4 * MAX) if how == "fetches" else None

    @app.agent(source)
    async def batches(stream: faust.StreamT[bytes]) -> None:
        taken = (take_ready_batches(stream, inbox, MAX, WITHIN_S, IDLE_S) if inbox is not None
                 else take_ready_events(stream, MAX, WITHIN_S, IDLE_S))
        async for batch in taken:  # records (ConsumerMessage) or events (their .message)
            values = [getattr(r, "message", r).value.decode() for r in batch]
            with open(log_path, "a") as log:
                log.write(json.dumps({"at": time.time(), "values": values}) + "\n")

    worker = faust.Worker(app, loglevel="error", quiet=True)
    worker.spinner = None
    worker.execute_from_commandline()


def _batches(log: Path, total: int, timeout_s: float) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists():
            rows = [json.loads(line) for line in log.read_text().splitlines()]
            if sum(len(r["values"]) for r in rows) >= total:
                return rows
        time.sleep(0.05)
    raise AssertionError(f"the agent took fewer than {total} records in {timeout_s}s: "
                         f"{log.read_text() if log.exists() else 'no batch'}")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["fetches", "events"])
def test_a_burst_is_taken_when_it_stops_not_after_the_batch_window(tmp_path: Path, how: str) -> None:
    from confluent_kafka import Producer

    log = tmp_path / "batches.jsonl"
    with cluster() as settings:
        bootstrap = settings.require_bootstrap()
        topic = f"test.batching.{time.time_ns()}"
        producer = Producer(settings.librdkafka_producer())

        def burst(producer: Producer, prefix: str, n: int) -> float:
            for i in range(n):
                producer.produce(topic, f"{prefix}{i}".encode(), key=b"k")
            assert producer.flush(30) == 0
            return time.time()

        burst(producer, "a", 25)  # waiting for the consumer: read from the start
        child = subprocess.Popen([sys.executable, "-c", "import sys; from tests.integration.streams.test_batching "
                                  "import _child; _child(*sys.argv[1:])", bootstrap, topic, str(log), how],
                                 stderr=subprocess.PIPE, text=True)
        try:
            first = _batches(log, 25, 120)
            sent = burst(producer, "b", 3)
            rows = _batches(log, 28, 60)
        finally:
            child.kill()
            _, err = child.communicate(timeout=30)
            del producer
    values = [v for r in rows for v in r["values"]]
    assert values == [f"a{i}" for i in range(25)] + ["b0", "b1", "b2"]  # all, once, in order
    assert all(1 <= len(r["values"]) <= MAX for r in rows)  # never more than max_ in a batch
    assert sum(len(r["values"]) for r in first) == 25
    (late,) = [r for r in rows if r["values"][0].startswith("b")]
    # Taken once nothing more came for IDLE_S (plus the fetch), not WITHIN_S after it began.
    assert late["at"] - sent < WITHIN_S / 2, err[-2000:]
