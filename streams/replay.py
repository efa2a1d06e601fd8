"""Replay / backfill: ``clinstream replay --from TOPIC --since T --to DESTINATION``.

Re-reads a window of history (by record timestamp: ``offsets_for_times`` on every
partition), decodes the ClinicalEvents (``identified.events`` or
``canonical.events``), re-runs the destination's routing under the *current*
topology and the *current* consent decisions (``consent.decisions``), and writes
what passes to ``dest.<destination>`` plus the disclosure to
``audit.disclosures`` — the same records the route stage would write today.

Event ids are deterministic, so sinks that upsert by (destination, event_id)
(Postgres) or write idempotently do not double what they already had: a replay
over a window that was delivered before is a no-op for them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from confluent_kafka import OFFSET_END, Consumer, KafkaError, Message, Producer, TopicPartition

from schemas import headers as H
from schemas.envelope import EnvelopeError, SchemaMismatchError, decode_event, encode_event, schema_fingerprint
from streams.route.consent import ConsentError, ConsentState
from streams.route.plan import Delivered, DestinationPlan, compile_topology
from streams.topic_reader import PartitionReader, TopicReadTimeout, read_topics, tool_consumer
from topology.model import AUDIT, CONSENT, Topology
from topology.settings import KafkaSettings

REPLAY_HEADER = "clinstream-replay"
# record timestamps are producer clocks: tolerate this much disorder before ending a partition's window
LATE_TOLERANCE_MS = 5 * 60 * 1000
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class ReplayError(RuntimeError):
    """A replay cannot start or finish (bad time, unknown topic/destination, delivery failure)."""


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """ISO 8601 (``2024-03-01T00:00:00Z``, a date), epoch milliseconds, or a duration ago (``90m``, ``7d``)."""
    now = now or datetime.now(UTC)
    value = text.strip()
    m = _DURATION.match(value)
    if m:
        return now - timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})
    if value.isdigit():
        return datetime.fromtimestamp(int(value) / 1000, UTC)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ReplayError(f"{text!r}: expected ISO 8601, epoch milliseconds or a duration like 90m / 7d") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_rate(text: str | float | None) -> float | None:
    if text is None or isinstance(text, float | int):
        return float(text) if text else None
    value = text.strip().removesuffix("/s")
    try:
        rate = float(value)
    except ValueError:
        raise ReplayError(f"--rate {text!r}: expected N/s, e.g. 500/s") from None
    if rate <= 0:
        raise ReplayError("--rate must be positive")
    return rate


@dataclass
class ReplayReport:
    source_topic: str
    destination: str
    since: str
    until: str | None
    dry_run: bool
    run_id: str
    read: int = 0
    delivered: int = 0
    denied: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    outside_window: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "source_topic": self.source_topic, "destination": self.destination, "since": self.since,
            "until": self.until, "dry_run": self.dry_run, "run_id": self.run_id, "read": self.read,
            "delivered": self.delivered, "denied": dict(self.denied), "errors": dict(self.errors),
            "outside_window": self.outside_window,
        }


def load_consent(settings: KafkaSettings, topic: str = CONSENT) -> dict[str, ConsentState]:
    """Current consent state per EUID from the compacted decisions topic (last record wins)."""
    states: dict[str, ConsentState] = {}
    try:
        records = list(read_topics(settings, [topic], purpose="replay"))
    except TopicReadTimeout as exc:
        raise ReplayError(f"timed out reading {topic}: {exc}") from exc
    for msg in records:
        key = msg.key()
        if not key:
            continue
        if msg.value() is None:  # tombstone: consent state removed
            states.pop(key.decode(), None)
            continue
        try:
            states[key.decode()] = ConsentState.from_json(msg.value())
        except ConsentError:
            continue  # a corrupt state is not a permit; the destination default applies
    return states


def _start_offsets(consumer: Consumer, topic: str, since_ms: int) -> list[TopicPartition]:
    md = consumer.list_topics(topic, timeout=10)
    if topic not in md.topics or md.topics[topic].error is not None:
        raise ReplayError(f"topic {topic!r} does not exist")
    wanted = [TopicPartition(topic, p, since_ms) for p in sorted(md.topics[topic].partitions)]
    found = consumer.offsets_for_times(wanted, timeout=15)
    # offset -1: nothing at or after since on that partition
    return [tp for tp in found if tp.offset >= 0 and tp.offset != OFFSET_END]


def _window(settings: KafkaSettings, topic: str, since_ms: int, until_ms: int | None,
            report: ReplayReport) -> Iterator[Message]:
    consumer = tool_consumer(settings, f"replay-{report.run_id}")
    try:
        reader = PartitionReader(consumer, _start_offsets(consumer, topic, since_ms))
        for msg in reader:
            _, ts = msg.timestamp()
            if until_ms is not None and ts > until_ms:
                report.outside_window += 1
                if ts > until_ms + LATE_TOLERANCE_MS:
                    # far past the window: producers' clocks are not that far apart, stop here
                    reader.stop(msg.topic(), msg.partition())
                continue
            if ts < since_ms:  # an out-of-order straggler after the start offset
                report.outside_window += 1
                continue
            yield msg
    except TopicReadTimeout as exc:
        raise ReplayError(f"timed out reading {topic}: {exc}") from exc
    finally:
        consumer.close()


def replay(
    topology: Topology,
    settings: KafkaSettings,
    *,
    source_topic: str,
    destination: str,
    since: datetime,
    until: datetime | None = None,
    dry_run: bool = False,
    rate: float | None = None,
    show_progress: bool = False,
    plan: DestinationPlan | None = None,
) -> ReplayReport:
    """Re-route one time window of ``source_topic`` to one destination; returns the counts."""
    dest = topology.destination(destination)
    plan = plan or compile_topology([dest])[0]
    if until is not None and until <= since:
        raise ReplayError(f"--until {until.isoformat()} is not after --since {since.isoformat()}")
    report = ReplayReport(source_topic, dest.name, since.isoformat(), until.isoformat() if until else None, dry_run,
                          uuid.uuid4().hex[:12])
    consent = load_consent(settings)
    producer = None if dry_run else Producer(settings.librdkafka_producer(**{"linger.ms": 5}))
    failed: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failed.append(err.str())

    since_ms = int(since.timestamp() * 1000)
    until_ms = int(until.timestamp() * 1000) if until else None
    started = time.monotonic()
    progress = _progress(show_progress, f"replay {source_topic} -> {dest.topic}")
    try:
        for msg in _window(settings, source_topic, since_ms, until_ms, report):
            report.read += 1
            if rate:
                # throttle on records read: the target systems see at most ``rate`` per second
                ahead = report.read / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            msg_headers = H.as_dict(msg.headers())
            try:
                event = decode_event(msg.value() or b"", msg_headers.get(H.SCHEMA_FINGERPRINT))
            except SchemaMismatchError:
                report.errors["other-schema"] += 1
                continue
            except EnvelopeError:
                report.errors["not-a-clinical-event"] += 1
                continue
            euid = (event.get("patient") or {}).get("euid")
            decision = plan.apply(event, consent.get(euid) if euid else None)
            if not isinstance(decision, Delivered):
                report.denied[decision.reason] += 1
                continue
            report.delivered += 1
            if producer is not None:
                key = euid.encode() if euid else msg.key()
                hdrs = H.encode([
                    (H.EVENT_ID, event["event_id"]),
                    (H.SOURCE, event.get("source") or ""),
                    (H.TRACEPARENT, msg_headers.get(H.TRACEPARENT, "")),
                    (H.RECEIVED_AT, event.get("received_at") or ""),
                    (H.SCHEMA_FINGERPRINT, schema_fingerprint()),
                    (REPLAY_HEADER, report.run_id),
                ])
                _produce(producer, plan.topic, encode_event(decision.event), key, hdrs, on_delivery)
                _produce(producer, AUDIT, orjson.dumps(decision.disclosure), key, hdrs, on_delivery)
            if progress is not None:
                progress.update(report)
        if producer is not None and producer.flush(60):
            raise ReplayError("replay: records still undelivered after 60 s (rerun: replays are idempotent)")
    finally:
        if progress is not None:
            progress.close()
    if failed:
        report.errors["delivery"] += len(failed)
        raise ReplayError(f"replay: {len(failed)} record(s) not delivered: {failed[0]} (rerun: replays are "
                          "idempotent)")
    return report


def _produce(producer: Producer, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]],
             cb: Any) -> None:
    while True:
        try:
            producer.produce(topic, value, key=key, headers=headers, on_delivery=cb)
            return
        except BufferError:
            producer.poll(0.1)  # local queue full: let deliveries drain


class _Progress:
    def __init__(self, title: str) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._p = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                           TextColumn("read {task.fields[read]}  delivered {task.fields[delivered]}  "
                                      "denied {task.fields[denied]}"), TimeElapsedColumn(),
                           console=_stderr_console(), transient=False)
        self._task = self._p.add_task(title, read=0, delivered=0, denied=0)
        self._p.start()
        self._last = 0.0

    def update(self, report: ReplayReport) -> None:
        now = time.monotonic()
        if now - self._last > 0.1:  # redraws cost more than routing an event
            self._last = now
            self._p.update(self._task, read=report.read, delivered=report.delivered,
                           denied=sum(report.denied.values()))

    def close(self) -> None:
        self._p.stop()


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _progress(enabled: bool, title: str) -> _Progress | None:
    return _Progress(title) if enabled else None


# --- CLI -------------------------------------------------------------------------

def add_replay_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("replay", help="re-route a time window of history to a destination (backfill)")
    p.add_argument("--topology", "-t", required=True, help="topology YAML (the current policies apply)")
    p.add_argument("--from", dest="source_topic", default="identified.events",
                   help="topic of ClinicalEvents to re-read (identified.events or canonical.events)")
    p.add_argument("--since", required=True, help="ISO 8601, epoch ms, or a duration ago (90m, 7d)")
    p.add_argument("--until", default=None)
    p.add_argument("--to", dest="destination", required=True, help="destination name")
    p.add_argument("--dry-run", action="store_true", help="count what would be delivered; write nothing")
    p.add_argument("--rate", default=None, help="max records per second, e.g. 500/s")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=replay_command)


def replay_command(args: argparse.Namespace) -> int:
    from topology.model import TopologyError, load_topology

    settings = KafkaSettings()
    if not settings.bootstrap_servers:
        print("clinstream: KAFKA_BOOTSTRAP_SERVERS is not set", file=sys.stderr)
        return 2
    try:
        topo = load_topology(args.topology)
        report = replay(topo, settings, source_topic=args.source_topic, destination=args.destination,
                        since=parse_time(args.since), until=parse_time(args.until) if args.until else None,
                        dry_run=args.dry_run, rate=parse_rate(args.rate),
                        show_progress=not args.json and sys.stderr.isatty())
    except (ReplayError, TopologyError) as exc:
        print(f"clinstream replay: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    verb = "would deliver" if report.dry_run else "delivered"
    print(f"replay {report.run_id}: {report.source_topic} [{report.since} .. {report.until or 'now'}] "
          f"-> dest.{report.destination}{' (dry run)' if report.dry_run else ''}")
    print(f"  read {report.read}, {verb} {report.delivered}, denied {sum(report.denied.values())}, "
          f"errors {sum(report.errors.values())}")
    for reason, n in report.denied.most_common():
        print(f"    denied {reason}: {n}")
    for reason, n in report.errors.most_common():
        print(f"    error {reason}: {n}")
    return 0
