"""Crash tests: SIGKILL the worker / the sink / the MLLP listener mid-run; nothing lost, nothing doubled.

Default size keeps the suite fast; ``pytest --soak tests/e2e/test_crash.py -s`` runs the large version.
Each test prints N, K and the counts it checked.
"""

from __future__ import annotations

import asyncio
import random
import signal
import threading
import time

import pytest

from connectors.sources.mllp.client import MllpClient
from schemas import headers as H
from schemas.hl7v2.ack import ack_code_of
from tests.e2e.test_pipeline import _dests, make_pipeline, ndjson_ids, pg_rows
from tests.support.pipeline import Pipeline, adt_message, wait_until
from tests.support.topics import read_all
from topology.broker import free_port

pytestmark = pytest.mark.timeout(900)


def distinct_ids(p: Pipeline, topic: str) -> tuple[int, int]:
    ids = [H.as_dict(m.headers()).get(H.EVENT_ID) for m in read_all(p.bootstrap, topic)
           if H.as_dict(m.headers()).get(H.SOURCE) == p.source_name]
    return len(ids), len(set(ids))


class Sender(threading.Thread):
    """Sends messages over MLLP (closed loop); resends on AE or a broken connection, like a real sender."""

    def __init__(self, port_of: callable, messages: list[bytes], connections: int = 2) -> None:
        super().__init__(daemon=True)
        self.port_of, self.messages, self.connections = port_of, messages, connections
        self.acked: set[int] = set()
        self.resent = 0

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        async def conn(idx: list[int]) -> None:
            client: MllpClient | None = None
            for i in idx:
                while True:
                    try:
                        if client is None:
                            client = await MllpClient("127.0.0.1", self.port_of(), timeout_s=10).connect()
                        code, _ = ack_code_of(await client.send(self.messages[i]))
                        if code == "AA":
                            self.acked.add(i)
                            break
                    except (TimeoutError, OSError, Exception):  # listener down: reconnect and resend
                        client = None
                    self.resent += 1
                    await asyncio.sleep(0.2)
            if client is not None:
                await client.close()

        ids = list(range(len(self.messages)))
        await asyncio.gather(*(conn(ids[c::self.connections]) for c in range(self.connections)))


def _start_all(p: Pipeline, n: int, port: int | None = None) -> tuple[str, str, Sender]:
    """Source, worker and both sinks running, and a sender feeding N ADT messages."""
    ehr, billing, _ = _dests(p)
    listen = p.start_source(port=port)
    p.start_worker()
    p.start_sink(ehr)
    p.start_sink(billing)
    sender = Sender(lambda: listen, [adt_message(i, ("A01", "A04", "A08")[i % 3]) for i in range(n)])
    sender.start()
    return ehr, billing, sender


def _verify(p: Pipeline, n: int, k: int, what: str) -> None:
    _ehr, _billing, table = _dests(p)
    expected_billing = sum(1 for i in range(n) if i % 3 != 2)
    ok = wait_until(lambda: pg_rows(p.pg_dsn, table)[0] >= n
                    and len(set(ndjson_ids(p.ndjson_dir))) >= expected_billing, 300)
    time.sleep(2)
    rows, distinct_rows = pg_rows(p.pg_dsn, table)
    lines = ndjson_ids(p.ndjson_dir)
    stages = {t: distinct_ids(p, t) for t in ("canonical.events", "dedup.events", "identified.events")}
    print(f"\n{what}: N={n} K={k} postgres rows={rows} (distinct {distinct_rows}); "
          f"ndjson lines={len(lines)} (distinct {len(set(lines))}, expected {expected_billing}); "
          + "; ".join(f"{t}: records={a} distinct={b}" for t, (a, b) in stages.items()))
    assert ok, p.logs()
    assert (rows, distinct_rows) == (n, n)
    assert len(lines) == len(set(lines)) == expected_billing
    # in = out + DLQ + filtered per stage, by distinct event id (records may repeat: at-least-once)
    for _topic, (_records, distinct) in stages.items():
        assert distinct == n
    assert not read_all(p.bootstrap, "dlq.normalize") and not read_all(p.bootstrap, "dlq.identity")


def test_worker_sigkilled_k_times(e2e_bootstrap, fresh_pg_dsn, tmp_path, unique_name, soak):
    n, k = (3000, 5) if soak else (240, 2)
    p = make_pipeline(e2e_bootstrap, fresh_pg_dsn, tmp_path, unique_name, prefix="c")
    try:
        _ehr, _billing, sender = _start_all(p, n)
        rng = random.Random(7)
        for _ in range(k):
            time.sleep(rng.uniform(3.0, 8.0))
            p.kill("worker", signal.SIGKILL)
            time.sleep(rng.uniform(0.2, 1.5))
            p.start_worker()
        sender.join(600)
        assert len(sender.acked) == n
        _verify(p, n, k, "worker SIGKILL")
    finally:
        p.stop()


def test_sink_sigkilled_k_times(e2e_bootstrap, fresh_pg_dsn, tmp_path, unique_name, soak):
    n, k = (3000, 5) if soak else (240, 2)
    p = make_pipeline(e2e_bootstrap, fresh_pg_dsn, tmp_path, unique_name, prefix="c")
    try:
        ehr, billing, sender = _start_all(p, n)
        rng = random.Random(11)
        for _ in range(k):
            time.sleep(rng.uniform(3.0, 8.0))
            for dest in (ehr, billing):
                p.kill(f"sink-{dest}", signal.SIGKILL)
                p.start_sink(dest)
        sender.join(600)
        assert len(sender.acked) == n
        _verify(p, n, k, "sink SIGKILL")
    finally:
        p.stop()


def test_listener_sigkilled_after_random_frames(e2e_bootstrap, fresh_pg_dsn, tmp_path, unique_name, soak):
    n, k = (2000, 5) if soak else (200, 2)
    p = make_pipeline(e2e_bootstrap, fresh_pg_dsn, tmp_path, unique_name, prefix="c")
    try:
        port = free_port()  # fixed, so the restarted listener is where the sender reconnects
        _ehr, _billing, sender = _start_all(p, n, port=port)
        rng = random.Random(13)
        kills = 0
        while kills < k and sender.is_alive():
            target = rng.randint(10, max(11, n // (k + 1)))
            start = len(sender.acked)
            wait_until(lambda start=start, target=target: len(sender.acked) >= start + target or not sender.is_alive(),
                       120, 0.05)
            p.kill("source", signal.SIGKILL)
            kills += 1
            time.sleep(rng.uniform(0.2, 1.0))
            p.start_source(port=port)
        sender.join(600)
        # every ACKed message is in Kafka (commit-then-ACK), resends were deduplicated downstream
        raw_total, raw_distinct = distinct_ids(p, f"raw.hl7v2.{p.source_name}")
        assert len(sender.acked) == n and raw_distinct == n
        print(f"\nlistener SIGKILL: N={n} K={kills} raw records={raw_total} distinct={raw_distinct} "
              f"resends={sender.resent}")
        _verify(p, n, kills, "listener SIGKILL")
    finally:
        p.stop()
