"""DLQ tooling: ``clinstream dlq list | show | redrive``.

Every ``dlq.<stage>`` record carries the original bytes and where they came from
(``schemas.headers.dlq_headers``). ``list`` summarises what is there, ``show``
explains one record with PHI masked unless ``--reveal``, ``redrive`` puts records
back on their origin topic after a fix.

Redrives are logged on ``audit.redrives`` (one JSON record per redriven DLQ
record). The log is what makes redrive safe to repeat: a DLQ record already
redriven is skipped unless ``force``, and the redrive count of an event is the
larger of its ``redrive-count`` header and the number of times the log has seen
it, so a record that fails again in a stage that does not copy headers forward
still hits the ``max_redrives`` limit instead of looping forever.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from schemas import headers as H
from schemas.envelope import EnvelopeError, decode_event, utc_now_iso
from streams.topic_reader import TopicReadTimeout, read_topics, tool_consumer
from topology.model import REDRIVES
from topology.plan import ensure_topic
from topology.settings import KafkaSettings

REDRIVE_LOG = REDRIVES
DEFAULT_MAX_REDRIVES = 3
MASK = "***"
# headers describing the failure, not the record: dropped when the record goes back
_FAILURE_HEADERS = frozenset({
    H.ERROR_STAGE, H.ERROR_CLASS, H.ERROR_MESSAGE, H.ORIGIN_TOPIC, H.ORIGIN_PARTITION, H.ORIGIN_OFFSET,
    "truncated", "http-status", H.REDRIVE_COUNT, "redriven-from",
})
PHI_SEGMENTS = frozenset({"PID", "NK1", "GT1", "IN1", "PD1", "IN2", "MRG"})
JSON_KEEP_KEYS = frozenset({"resourceType", "system", "code"})


class DlqError(RuntimeError):
    """A DLQ command cannot do what was asked (bad reference, missing topic, ...)."""


# --- pure: masking ---------------------------------------------------------------

def mask_hl7(text: str) -> str:
    """Mask the contents of patient-identifying segments, keeping segment ids and separators.

    Separators come from the message's own MSH (or FHS/BHS for batches); other
    segments stay readable so the operator can still see what kind of message it is.
    """
    head = text[:8]
    fs, enc = "|", "^~\\&"
    if head[:3] in ("MSH", "FHS", "BHS") and len(text) > 8:
        fs, enc = text[3], text[4:8]
    keep = re.escape(fs + enc)
    leaf = re.compile(f"[^{keep}]+")
    out = []
    for seg in re.split(r"(\r\n|\r|\n)", text):
        name = seg[:3]
        if name in PHI_SEGMENTS and seg[3:4] == fs:
            seg = name + leaf.sub(MASK, seg[3:])
        out.append(seg)
    return "".join(out)


def mask_json(value: Any, key: str | None = None) -> Any:
    """Mask every string value except the structural codes (resourceType, system, code)."""
    if isinstance(value, dict):
        return {k: mask_json(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_json(v, key) for v in value]
    if isinstance(value, str):
        return value if key in JSON_KEEP_KEYS else MASK
    return value


def render_payload(payload: bytes | None, reveal: bool = False) -> tuple[str, str]:
    """(kind, text) for display: HL7 v2, JSON, a ClinicalEvent (Avro) or opaque bytes."""
    if not payload:
        return "empty", ""
    stripped = payload.lstrip()
    if stripped[:3] in (b"MSH", b"FHS", b"BHS"):
        text = payload.decode("utf-8", "replace")
        return "hl7v2", text if reveal else mask_hl7(text)
    if stripped[:1] in (b"{", b"["):
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return "invalid-json", payload.decode("utf-8", "replace") if reveal else f"<{len(payload)} bytes masked>"
        shown = doc if reveal else mask_json(doc)
        return "json", orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode()
    try:
        event = decode_event(payload)
    except EnvelopeError:
        text = payload.decode("utf-8", "replace")
        return "bytes", text if reveal else f"<{len(payload)} bytes masked>"
    shown = event if reveal else {**mask_json(event), "event_id": event.get("event_id"),
                                  "event_type": event.get("event_type"), "source": event.get("source")}
    return "clinical-event", orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode()


# --- Kafka helpers ----------------------------------------------------------------

@dataclass(frozen=True)
class RecordRef:
    topic: str
    partition: int
    offset: int

    @classmethod
    def parse(cls, text: str) -> RecordRef:
        parts = text.rsplit(":", 2)
        if len(parts) != 3 or not parts[0]:
            raise DlqError(f"{text!r}: expected TOPIC:PARTITION:OFFSET")
        topic = parts[0]
        try:
            return cls(topic, int(parts[1]), int(parts[2]))
        except ValueError:
            raise DlqError(f"{text!r}: partition and offset must be integers") from None

    def __str__(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


def _consumer(settings: KafkaSettings) -> Consumer:
    return tool_consumer(settings, "dlq")


def dlq_topics(settings: KafkaSettings, stage: str | None = None) -> list[str]:
    admin = AdminClient(settings.librdkafka())
    names = admin.list_topics(timeout=10).topics
    wanted = f"dlq.{stage}" if stage else None
    return sorted(n for n in names if n.startswith("dlq.") and (wanted is None or n == wanted))


def scan(settings: KafkaSettings, topics: Sequence[str]) -> Iterator[Message]:
    """Every record on ``topics`` from the start up to the end (then stop)."""
    try:
        yield from read_topics(settings, topics, purpose="dlq")
    except TopicReadTimeout as exc:
        raise DlqError(f"timed out reading {', '.join(topics)}: {exc}") from exc


def fetch(settings: KafkaSettings, ref: RecordRef) -> Message:
    consumer = _consumer(settings)
    try:
        md = consumer.list_topics(timeout=10)
        if ref.topic not in md.topics or ref.partition not in md.topics[ref.topic].partitions:
            raise DlqError(f"{ref}: no such topic/partition")
        low, high = consumer.get_watermark_offsets(TopicPartition(ref.topic, ref.partition), timeout=10)
        if ref.offset < low:
            raise DlqError(f"{ref}: no such record (partition starts at {low})")
        # ``high`` may lag the true end on the embedded broker (it reports the last batch's base
        # offset + 1) but is never past it: starting at most at high - 1 always lands on a record,
        # and reading on to the end-of-partition event tells whether ``ref.offset`` exists.
        start = min(ref.offset, max(low, high - 1))
        consumer.assign([TopicPartition(ref.topic, ref.partition, start)])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    break
                raise DlqError(f"{ref}: {msg.error().str()}")
            if msg.offset() == ref.offset:
                return msg
            if msg.offset() > ref.offset:
                break
        raise DlqError(f"{ref}: no such record")
    finally:
        consumer.close()


# --- list ------------------------------------------------------------------------

@dataclass
class DlqGroup:
    topic: str
    stage: str
    error_class: str
    count: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    first_offset: str = ""


def list_dlq(settings: KafkaSettings, stage: str | None = None) -> list[DlqGroup]:
    """DLQ contents grouped by (topic, stage, error class), with the commonest reasons."""
    groups: dict[tuple[str, str, str], DlqGroup] = {}
    for msg in scan(settings, dlq_topics(settings, stage)):
        h = H.as_dict(msg.headers())
        st = h.get(H.ERROR_STAGE) or msg.topic().removeprefix("dlq.")
        cls = h.get(H.ERROR_CLASS) or "unknown"
        key = (msg.topic(), st, cls)
        g = groups.get(key)
        if g is None:
            g = groups[key] = DlqGroup(msg.topic(), st, cls, first_offset=f"{msg.topic()}:{msg.partition()}:"
                                                                        f"{msg.offset()}")
        g.count += 1
        # numbers (sizes, positions) make every message unique; group by the reason's shape
        g.reasons[re.sub(r"\d+", "N", h.get(H.ERROR_MESSAGE, ""))[:200]] += 1
    return sorted(groups.values(), key=lambda g: (g.topic, -g.count, g.error_class))


# --- show ------------------------------------------------------------------------

def show_record(settings: KafkaSettings, ref: RecordRef | str, reveal: bool = False) -> dict[str, Any]:
    ref = RecordRef.parse(ref) if isinstance(ref, str) else ref
    msg = fetch(settings, ref)
    kind, text = render_payload(msg.value(), reveal)
    key = msg.key()
    return {
        "ref": str(ref),
        "timestamp_ms": msg.timestamp()[1],
        "key": (key.decode("utf-8", "replace") if reveal else MASK) if key else None,
        "headers": H.as_dict(msg.headers()),
        "payload_kind": kind,
        "payload_bytes": len(msg.value() or b""),
        "payload": text,
        "masked": not reveal,
    }


# --- redrive -----------------------------------------------------------------------

@dataclass
class RedriveItem:
    ref: str
    to: str
    event_id: str | None
    error_class: str
    redrive_count: int
    status: str  # redriven | would-redrive | refused:<why> | skipped:<why>


@dataclass
class RedriveReport:
    items: list[RedriveItem] = field(default_factory=list)
    dry_run: bool = False

    def count(self, status_prefix: str) -> int:
        return sum(1 for i in self.items if i.status.startswith(status_prefix))


def _ensure_topic(settings: KafkaSettings, name: str) -> None:
    try:
        ensure_topic(AdminClient(settings.librdkafka()), name)
    except Exception as exc:
        raise DlqError(f"cannot create {name}: {exc}") from exc


def _redrive_history(settings: KafkaSettings) -> tuple[set[str], Counter[str]]:
    done: set[str] = set()
    per_event: Counter[str] = Counter()
    for msg in scan(settings, [REDRIVE_LOG]):
        try:
            entry = orjson.loads(msg.value())
        except orjson.JSONDecodeError:
            continue
        done.add(entry.get("dlq", ""))
        if entry.get("event_id"):
            per_event[entry["event_id"]] += 1
    return done, per_event


def redrive(
    settings: KafkaSettings,
    *,
    stage: str | None = None,
    error_class: str | None = None,
    offsets: Iterable[str | RecordRef] = (),
    dry_run: bool = False,
    max_redrives: int = DEFAULT_MAX_REDRIVES,
    force: bool = False,
) -> RedriveReport:
    """Re-produce selected DLQ records to their origin topic (original key, headers, count + 1)."""
    refs = {str(RecordRef.parse(o) if isinstance(o, str) else o) for o in offsets}
    topics = sorted({r.rsplit(":", 2)[0] for r in refs}) if refs else dlq_topics(settings, stage)
    if stage:
        topics = [t for t in topics if t == f"dlq.{stage}"]
    done, per_event = _redrive_history(settings)
    report = RedriveReport(dry_run=dry_run)
    plan: list[tuple[RedriveItem, Message, list[tuple[str, bytes]]]] = []
    for msg in scan(settings, topics):
        ref = f"{msg.topic()}:{msg.partition()}:{msg.offset()}"
        if refs and ref not in refs:
            continue
        h = H.as_dict(msg.headers())
        cls = h.get(H.ERROR_CLASS, "unknown")
        if error_class and cls != error_class:
            continue
        event_id = h.get(H.EVENT_ID)
        count = max(int(h.get(H.REDRIVE_COUNT, "0") or 0), per_event.get(event_id, 0) if event_id else 0)
        origin = h.get(H.ORIGIN_TOPIC, "")
        item = RedriveItem(ref, origin, event_id, cls, count + 1, "")
        if not origin:
            item.status = "refused:no-origin-topic"
        elif h.get("truncated") == "true":
            item.status = "refused:truncated-payload"
        elif count >= max_redrives:
            item.status = f"refused:redrive-count {count} reached max {max_redrives}"
        elif ref in done and not force:
            item.status = "skipped:already-redriven"
        else:
            item.status = "would-redrive" if dry_run else "pending"
            kept = [(k, v or b"") for k, v in (msg.headers() or ()) if k not in _FAILURE_HEADERS]
            out_headers = [*kept, (H.REDRIVE_COUNT, str(count + 1).encode()), ("redriven-from", ref.encode())]
            plan.append((item, msg, out_headers))
        report.items.append(item)
    if dry_run or not plan:
        return report
    _send_redrives(settings, plan)
    return report


def _send_redrives(settings: KafkaSettings, plan: list[tuple[RedriveItem, Message, list[tuple[str, bytes]]]]) -> None:
    _ensure_topic(settings, REDRIVE_LOG)
    producer = Producer(settings.librdkafka_producer(**{"linger.ms": 5}))
    errors: list[str] = []

    def delivered(item: RedriveItem) -> Any:
        def cb(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                item.status = f"failed:{err.str()}"
                errors.append(item.ref)
            else:
                item.to = f"{msg.topic()}:{msg.partition()}:{msg.offset()}"
                item.status = "redriven"
        return cb

    for item, msg, out_headers in plan:
        producer.produce(item.to, msg.value(), key=msg.key(), headers=out_headers, on_delivery=delivered(item))
    if producer.flush(30):
        raise DlqError("redrive: records not delivered within 30 s (nothing logged; safe to rerun)")
    at = utc_now_iso()
    for item, _, _ in plan:
        if item.status == "redriven":
            entry = {"dlq": item.ref, "to": item.to, "event_id": item.event_id, "error_class": item.error_class,
                     "redrive_count": item.redrive_count, "at": at}
            producer.produce(REDRIVE_LOG, orjson.dumps(entry), key=item.ref.encode())
    if producer.flush(30):
        raise DlqError(f"redrive done but the log on {REDRIVE_LOG} was not written within 30 s")
    if errors:
        raise DlqError(f"redrive: {len(errors)} record(s) not delivered: {', '.join(errors[:10])}")


# --- CLI -------------------------------------------------------------------------

def add_dlq_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("dlq", help="inspect and redrive dead-lettered records")
    dsub = p.add_subparsers(dest="dlq_command", required=True)
    ls = dsub.add_parser("list", help="DLQ records grouped by stage and error class")
    ls.add_argument("--stage", help="only dlq.<stage>")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list_command)
    sh = dsub.add_parser("show", help="one record: headers and payload (PHI masked)")
    sh.add_argument("ref", metavar="TOPIC:PARTITION:OFFSET")
    sh.add_argument("--reveal", action="store_true", help="show PHI unmasked (access is your responsibility)")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=_show_command)
    rd = dsub.add_parser("redrive", help="put records back on their origin topic")
    rd.add_argument("--stage")
    rd.add_argument("--error-class")
    rd.add_argument("--offsets", nargs="+", default=[], metavar="TOPIC:PARTITION:OFFSET")
    rd.add_argument("--dry-run", action="store_true")
    rd.add_argument("--max-redrives", type=int, default=DEFAULT_MAX_REDRIVES)
    rd.add_argument("--force", action="store_true", help="redrive records already redriven before")
    rd.add_argument("--json", action="store_true")
    rd.set_defaults(func=_redrive_command)


def _settings() -> KafkaSettings:
    settings = KafkaSettings()
    if not settings.bootstrap_servers:
        print("clinstream: KAFKA_BOOTSTRAP_SERVERS is not set", file=sys.stderr)
        raise SystemExit(2)
    return settings


def _list_command(args: argparse.Namespace) -> int:
    groups = list_dlq(_settings(), args.stage)
    if args.json:
        print(json.dumps([{**asdict(g), "reasons": dict(g.reasons.most_common(5))} for g in groups], indent=2))
        return 0
    if not groups:
        print("DLQ is empty")
        return 0
    print(f"{'topic':<16} {'stage':<10} {'error class':<28} {'count':>7}  first record / commonest reason")
    for g in groups:
        reason = g.reasons.most_common(1)[0][0] if g.reasons else ""
        print(f"{g.topic:<16} {g.stage:<10} {g.error_class:<28} {g.count:>7}  {g.first_offset}")
        print(f"{'':<64}  {reason[:100]}")
    return 0


def _show_command(args: argparse.Namespace) -> int:
    try:
        rec = show_record(_settings(), args.ref, args.reveal)
    except DlqError as exc:
        print(f"clinstream dlq show: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rec, indent=2))
        return 0
    print(f"record   {rec['ref']}  ({rec['payload_kind']}, {rec['payload_bytes']} bytes"
          f"{', PHI masked; --reveal to show' if rec['masked'] else ''})")
    print(f"key      {rec['key']}")
    for k, v in rec["headers"].items():
        print(f"  {k}: {v}")
    print(rec["payload"].replace("\r", "\n"))
    return 0


def _redrive_command(args: argparse.Namespace) -> int:
    try:
        report = redrive(_settings(), stage=args.stage, error_class=args.error_class, offsets=args.offsets,
                         dry_run=args.dry_run, max_redrives=args.max_redrives, force=args.force)
    except DlqError as exc:
        print(f"clinstream dlq redrive: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"dry_run": report.dry_run, "items": [asdict(i) for i in report.items]}, indent=2))
    else:
        for i in report.items:
            print(f"{i.status:<40} {i.ref} -> {i.to or '-'} (redrive #{i.redrive_count}, {i.error_class})")
        verb = "would redrive" if report.dry_run else "redriven"
        done = report.count("would-redrive" if report.dry_run else "redriven")
        print(f"{verb}: {done}; refused: {report.count('refused')}; skipped: {report.count('skipped')}")
    return 1 if report.count("failed") else 0
