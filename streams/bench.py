"""The worker's workload, and ``clinstream bench stages``: the worker's stage chains in one process, no Kafka.

``bench pipeline`` says how fast the whole pipeline is; on this machine its figures swing
with whatever else runs, and the worker's CPU per message mixes the stages with Faust's
consumer path and the broker round trips. This bench runs what the worker runs per record
(``streams.worker.chains_for``: normalize + dedupe + identity as one chain, route as
another, with the worker's per-stage accounting in ``StageChain``) over the same synthetic
ADT feed ``bench pipeline`` sends, in batches, and reports CPU microseconds per event for
each stage and for the chain plumbing around them, so a change to a stage can be measured
on its own and compared in the same run. It measures under the collector settings the worker
runs with (``topology.runtime.worker_collector``).

The MPI index is a real ``ReplicatedStore`` (its RocksDB writes and reads are in); its topic
is a loopback: what a batch wrote comes back to the store's own apply path before the next
batch, as the echo from the broker does in the worker (``mpi_index_echo``). Left out, by
design: Kafka itself (consume, produce, commits) and the dedupe and consent tables' RocksDB
(plain dicts here; in the worker they are ``PartitionedTableView`` over Faust's stores).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from schemas import headers as H
from schemas.envelope import event_id_for, utc_now_iso
from streams.chain import Pending
from streams.stage import InRecord, Outcome, Output
from topology.model import IDENTIFIED, Topology

ADT_TRIGGERS = ("A01", "A04", "A08", "A03")
BENCH_SOURCE = "bench-feed"
BENCH_RAW_TOPIC = f"raw.hl7v2.{BENCH_SOURCE}"
_SYLLABLES = ("BA", "KO", "MI", "RAN", "TE", "LU", "SOR", "VE", "NA", "DRI", "PEL", "GO", "HAR", "WIN", "ZU",
              "LEN", "FA", "QUI", "MOR", "STA")


def synthetic_name(i: int, parts: int = 3) -> str:
    """A distinct, letters-only name per ``i`` (matchers ignore digits in names, so NAME123 won't do)."""
    out = []
    for _ in range(parts):
        i, r = divmod(i, len(_SYLLABLES))
        out.append(_SYLLABLES[r])
    return "".join(out)


def synthetic_pid(i: int, mrn: str) -> str:
    """A PID segment for synthetic person ``i``: varied names, birth date, address and phone, so
    different people look as different as real ones (they do not link) while ``i`` repeats the person."""
    h = int(hashlib.blake2b(str(i).encode(), digest_size=8).hexdigest(), 16)
    dob = f"19{30 + h % 70:02d}{1 + (h >> 8) % 12:02d}{1 + (h >> 12) % 28:02d}"
    street = f"{(h >> 20) % 9000 + 1} {synthetic_name(h >> 24, 2)} ST"
    city = ("BOSTON", "SALEM", "LOWELL", "QUINCY", "NEWTON", "WORCESTER", "LYNN", "REVERE")[(h >> 40) % 8]
    zip_code = f"0{1000 + (h >> 44) % 8999:04d}"
    phone = f"{200 + (h >> 50) % 800}{(h >> 16) % 10_000_000:07d}"
    return (f"PID|1||{mrn}^^^HOSP^MR||{synthetic_name(i, 4)}^{synthetic_name(h >> 32, 3)}^Q||{dob}|"
            f"{'F' if h % 2 else 'M'}|||{street}^^{city}^MA^{zip_code}||{phone}")


def bench_message(i: int, run: str) -> bytes:
    """ADT message ``i`` of run ``run``: a new person, MRN and visit per ``i``."""
    trig = ADT_TRIGGERS[i % len(ADT_TRIGGERS)]
    return (
        f"MSH|^~\\&|BENCH|HOSP|CLIN|HOSP|20240101120000||ADT^{trig}^ADT_A01|{run}{i:09d}|P|2.5\r"
        f"EVN|{trig}|20240101120000\r"
        f"{synthetic_pid(i, f'MRN{run}{i:08d}')}\r"
        f"PV1|1|I|W^{i % 40}^1^HOSP||||1234^SMITH^JOHN|||MED||||||||V{run}{i:08d}^^^HOSP^VN|||||||||||||||||||||||||"
        f"20240101120000\r"
    ).encode()


def bench_topology(dsn: str, partitions: int) -> dict[str, Any]:
    """The topology both benches run: one MLLP feed, one treatment destination (Postgres sink)."""
    return {
        "name": "bench",
        "topic_defaults": {"partitions": partitions, "replication_factor": 1},
        "sources": [{"name": BENCH_SOURCE, "kind": "mllp", "format": "hl7v2", "options": {"port": 0}}],
        "destinations": [{
            "name": "bench-ehr",
            "purpose": "TREAT",
            "event_types": ["ADT^*"],
            "allow": ["Patient.identifier", "Patient.name", "Patient.birthDate", "Patient.gender", "Patient.address",
                      "Encounter.identifier", "Encounter.status", "Encounter.class", "Encounter.period"],
            "sink": {"kind": "postgres", "options": {"dsn": dsn, "table": "bench_ehr"}},
        }],
    }


class _TimedStage:
    """A stage whose ``process`` and ``flush`` CPU time is summed (everything else is the stage's own)."""

    def __init__(self, stage: Any) -> None:
        self._stage = stage
        self.process_s = 0.0
        self.flush_s = 0.0
        if hasattr(stage, "flush"):
            self.flush = self._flush

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stage, name)

    def process(self, record: InRecord) -> Outcome:
        t0 = time.process_time()
        try:
            return self._stage.process(record)
        finally:
            self.process_s += time.process_time() - t0

    def _flush(self) -> list[Output]:
        t0 = time.process_time()
        try:
            return list(self._stage.flush() or ())
        finally:
            self.flush_s += time.process_time() - t0


class _EchoedRecord:
    """A record of the MPI index topic as the store's librdkafka consumer hands it over."""

    __slots__ = ("_headers", "_key", "_offset", "_value")

    def __init__(self, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]],
                 offset: int) -> None:
        self._key, self._value, self._headers, self._offset = key, value, list(headers), offset

    def error(self) -> None:
        return None

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes]]:
        return self._headers

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


class _LoopbackTopic:
    """The MPI index topic in memory: the store polls back what the last batch wrote to it."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._queued: list[_EchoedRecord] = []
        self._next_offset = 0

    def publish(self, pending: Sequence[Pending]) -> None:
        for topic, key, value, hdrs in pending:
            if topic == self.topic:
                self._queued.append(_EchoedRecord(key, value, hdrs, self._next_offset))
                self._next_offset += 1

    @property
    def queued(self) -> int:
        return len(self._queued)

    def take(self, num_messages: int = 1000) -> list[_EchoedRecord]:
        out, self._queued = self._queued[:num_messages], self._queued[num_messages:]
        return out


def _raw_record(i: int, offset: int) -> InRecord:
    raw = bench_message(i, "S")
    event_id = event_id_for(BENCH_SOURCE, raw)
    headers = {H.SOURCE: BENCH_SOURCE, H.EVENT_ID: event_id, H.RECEIVED_AT: utc_now_iso(),
               H.TRACEPARENT: H.traceparent_for(event_id)}
    return InRecord(topic=BENCH_RAW_TOPIC, partition=0, offset=offset, key=f"MRNS{i:08d}".encode(), value=raw,
                    headers=headers)


def _consumed(pending: Sequence[Pending], topic: str, first_offset: int) -> list[InRecord]:
    """The records of ``topic`` in ``pending`` as the next agent would consume them (bytes only)."""
    return [InRecord(topic=t, partition=0, offset=first_offset + n, key=key, value=value or b"",
                     headers=H.as_dict(hdrs))
            for n, (t, key, value, hdrs) in enumerate(p for p in pending if p[0] == topic)]


def run_stage_bench(events: int = 5000, batch: int = 50, warmup: int = 500) -> dict[str, Any]:
    from streams.dedupe.stage import DedupeStage
    from streams.identity.engine import MatchEngine
    from streams.identity.model import default_model
    from streams.identity.stage import IdentityStage
    from streams.normalize.stage import NormalizeStage
    from streams.replicated_store import ReplicatedStore
    from streams.route.stage import RouteStage
    from streams.worker import chains_for
    from topology.runtime import machine_cpu_shares, machine_cpu_ticks, worker_collector
    from topology.settings import KafkaSettings

    topology = Topology.model_validate(bench_topology("postgresql://bench@127.0.0.1/bench", 1))
    machine0 = machine_cpu_ticks()
    with tempfile.TemporaryDirectory(prefix="clinstream-bench-stages-") as tmp:
        index = ReplicatedStore(KafkaSettings(bootstrap_servers="127.0.0.1:9"), "bench-mpi-index",
                                Path(tmp) / "mpi-index")
        loopback = _LoopbackTopic(index.topic)  # the store's tail, fed in process
        stages = [_TimedStage(s) for s in (
            NormalizeStage(input_topics=topology.raw_topics()),
            DedupeStage(seen={}),
            IdentityStage(engine=MatchEngine(default_model(), store=index)),
            RouteStage.from_topology(topology, consent={}),
        )]
        before, route = chains_for(stages)  # type: ignore[arg-type]
        records = [_raw_record(i, i) for i in range(warmup + events)]
        delivered = 0
        chain_s = route_chain_s = echo_s = 0.0
        with worker_collector() as gc_settings:  # the collector the worker runs with
            for start in range(0, len(records), batch):
                if start == warmup:  # the measured part starts here: reset every counter
                    for s in stages:
                        s.process_s = s.flush_s = 0.0
                    chain_s = route_chain_s = echo_s = 0.0
                    delivered = 0
                pending: list[Pending] = []
                t0 = time.process_time()
                for record in records[start:start + batch]:
                    before.process(record, pending)
                before.flush(pending)
                t1 = time.process_time()
                routed: list[Pending] = []
                for record in _consumed(pending, IDENTIFIED, start):
                    route.process(record, routed)
                route.flush(routed)
                t2 = time.process_time()
                loopback.publish(pending)
                while loopback.queued:  # the echo of this batch's index writes
                    index.apply(loopback.take())  # type: ignore[arg-type]  # duck-typed Messages
                t3 = time.process_time()
                chain_s += t1 - t0
                route_chain_s += t2 - t1
                echo_s += t3 - t2
                delivered += sum(1 for p in routed if p[0].startswith("dest."))
        index.stop()
    per_event = {s.name: round(s.process_s * 1e6 / events, 1) for s in stages}
    per_event["mpi_index_flush"] = round(sum(s.flush_s for s in stages) * 1e6 / events, 1)
    stage_s = sum(s.process_s + s.flush_s for s in stages)
    per_event["mpi_index_echo"] = round(echo_s * 1e6 / events, 1)
    per_event["chain_plumbing"] = round((chain_s + route_chain_s - stage_s) * 1e6 / events, 1)
    total_s = chain_s + route_chain_s + echo_s
    return {
        "events": events,
        "batch": batch,
        "events_per_cpu_s": round(events / total_s, 1),
        "us_per_event": round(total_s * 1e6 / events, 1),
        "us_per_event_by_part": per_event,
        "delivered": delivered,
        "gc_gen0": gc_settings.gen0,
        "machine_cpu_pct": machine_cpu_shares(machine0, machine_cpu_ticks()),  # steal: a slower machine
    }


def add_bench_stages_parser(bench: Any) -> None:
    p = bench.add_parser("stages", help="the worker's stage chains in one process, no Kafka; CPU us per event")
    p.add_argument("--events", type=int, default=5000)
    p.add_argument("--batch", type=int, default=50, help="records per batch (the worker's take_events batch)")
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=bench_stages_command)


def bench_stages_command(args: argparse.Namespace) -> int:
    result = run_stage_bench(args.events, args.batch, args.warmup)
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
        return 0
    parts = ", ".join(f"{k} {v}" for k, v in result["us_per_event_by_part"].items())
    print(f"stages: {result['events_per_cpu_s']:,.0f} events per CPU-second ({result['us_per_event']} us/event: "
          f"{parts}); {result['delivered']} of {result['events']} delivered to bench-ehr")
    return 0
