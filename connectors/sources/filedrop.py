"""File-drop source (``kind: file``): poll a directory, ingest each file, move it when durable.

A ``format: hl7v2`` source takes HL7 v2 files (batch files wrapped in FHS/BHS
.. BTS/FTS, or one or more MSH messages per file); a ``format: fhir`` source
takes FHIR NDJSON (``.ndjson``, one resource per line). Each message/line is a
record on ``raw.<format>.<source>``; a record that is not HL7 / not a FHIR
resource goes to ``dlq.ingest`` with the file name and record index in its
headers. A file moves to ``done/`` only once every record is durably in Kafka;
a file that cannot be trusted as a whole (unreadable, too large, wrong format,
truncated batch) moves to ``error/`` next to a ``<name>.reason.txt``.

Crash safety without duplicates: records are produced in chunks; after each
chunk's delivery reports came back, ``.progress/<name>.json`` is replaced
atomically (temp file + ``os.replace``) with the number of records done, the
file's digest and, per partition, the offset the chunk reached. After a crash
the source resumes from the progress file and, for the window between the last
progress write and the crash, reads the topic tail from those offsets to find
records of this file (``file-sha256`` + ``file-record-index`` headers) that were
already delivered, and skips them. Deterministic event ids make any remaining
overlap idempotent downstream anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from pydantic import BaseModel, ConfigDict, Field

from connectors.sources.base import DLQ_INGEST, ingest_rejection_headers, parse_options, register_source
from connectors.sources.fhir_http import FhirRejection, parse_json, require_resource
from connectors.sources.fhir_http import patient_key as fhir_patient_key
from connectors.sources.hl7batch import Hl7FileError, split_hl7_file
from connectors.sources.mllp.listener import patient_key as hl7_patient_key
from schemas import headers as H
from schemas.envelope import event_id_for, utc_now_iso
from schemas.hl7v2.errors import Hl7ParseError
from schemas.hl7v2.msh import peek_msh
from topology.model import SourceSpec
from topology.producer import DeliveryError, DurableProducer
from topology.settings import KafkaSettings

log = logging.getLogger(__name__)
FILE_NAME = "file-name"
FILE_SHA = "file-sha256"
FILE_INDEX = "file-record-index"
FILE_LINE = "file-line"


class FileDropOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    directory: str
    poll_interval_s: float = Field(default=2.0, gt=0)
    settle_s: float = Field(default=1.0, ge=0, description="a file must be unchanged this long before it is read")
    chunk_records: int = Field(default=500, ge=1, description="records produced between progress checkpoints")
    max_file_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    max_record_bytes: int = Field(default=1_048_576, ge=256)
    max_depth: int = Field(default=64, ge=4)
    max_records_per_s: float | None = Field(default=None, gt=0, description="throttle big backfill drops")
    done_dir: str = "done"
    error_dir: str = "error"
    progress_dir: str = ".progress"


class FileFailure(Exception):
    """The whole file is refused; it goes to ``error/`` with this reason."""


@dataclass
class Record:
    index: int  # ordinal in the file, good and bad records alike
    payload: bytes
    line: int | None = None
    error: str | None = None  # set: goes to the DLQ with this reason
    error_class: str | None = None
    key: bytes | None = None


@dataclass
class FileStats:
    files_done: int = 0
    files_error: int = 0
    records: int = 0
    dlq: int = 0
    resumed_skipped: int = 0
    current: str | None = None
    failures: int = 0


@dataclass
class Progress:
    sha256: str
    produced: int = 0
    # topic -> partition -> next offset after this file's last checkpoint
    tails: dict[str, dict[str, int]] = field(default_factory=dict)


# --- pure splitting ------------------------------------------------------------

def hl7_records(data: bytes, max_record_bytes: int) -> list[Record]:
    try:
        parsed = split_hl7_file(data)
    except Hl7FileError as exc:
        raise FileFailure(str(exc)) from exc
    out = []
    for i, msg in enumerate(parsed.messages):
        rec = Record(i, msg)
        if len(msg) > max_record_bytes:
            rec.error, rec.error_class = f"message of {len(msg)} bytes exceeds max_record_bytes", "MessageTooLarge"
        else:
            try:
                peek_msh(msg)
                rec.key = hl7_patient_key(msg)
            except Hl7ParseError as exc:
                rec.error, rec.error_class = str(exc), type(exc).__name__
        out.append(rec)
    return out


def ndjson_records(data: bytes, max_record_bytes: int, max_depth: int) -> list[Record]:
    out: list[Record] = []
    for lineno, line in enumerate(data.split(b"\n"), start=1):
        line = line.rstrip(b"\r")
        if not line.strip():
            continue
        rec = Record(len(out), line, line=lineno)
        if len(line) > max_record_bytes:
            rec.error, rec.error_class = f"line of {len(line)} bytes exceeds max_record_bytes", "MessageTooLarge"
        else:
            try:
                rec.key = fhir_patient_key(require_resource(parse_json(line, max_depth)))
            except FhirRejection as exc:
                rec.error, rec.error_class = str(exc), type(exc).__name__
        out.append(rec)
    if not out:
        raise FileFailure("no records in the file")
    return out


# --- the source ------------------------------------------------------------------

class FileDropSource:
    def __init__(
        self,
        name: str,
        topic: str,
        fmt: str,
        options: FileDropOptions,
        settings: KafkaSettings,
        producer: DurableProducer | None = None,
    ) -> None:
        self.name = name
        self.topic = topic
        self.format = fmt
        self.options = options
        self.settings = settings
        self.inbox = Path(options.directory)
        self.done_dir = self.inbox / options.done_dir
        self.error_dir = self.inbox / options.error_dir
        self.progress_dir = self.inbox / options.progress_dir
        self._producer = producer
        self._own_producer = producer is None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one pass at a time: a file is never ingested twice concurrently
        self._seen: dict[str, tuple[int, int, float]] = {}
        # topic end offsets taken once per poll pass: a lower bound for every file of the pass,
        # so a directory of one-message files costs one offsets lookup, not one per file
        self._pass_tails: dict[str, dict[str, int]] | None = None  # name -> (size, mtime_ns, first seen unchanged)
        self.stats = FileStats()

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        for d in (self.inbox, self.done_dir, self.error_dir, self.progress_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._drop_stale_progress()
        if self._producer is None:
            self._producer = DurableProducer(self.settings)
        self._task = asyncio.create_task(self._loop(), name=f"filedrop-{self.name}")
        log.info("file source %s watching %s -> %s", self.name, self.inbox, self.topic)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._producer is not None and self._own_producer:
            await asyncio.to_thread(self._producer.close)
            self._producer = None

    def health(self) -> dict[str, Any]:
        s = self.stats
        return {"watching": str(self.inbox), "running": self._task is not None and not self._task.done(),
                "files_done": s.files_done, "files_error": s.files_error, "records": s.records, "dlq": s.dlq,
                "resumed_skipped": s.resumed_skipped, "current": s.current}

    async def _loop(self) -> None:
        while True:
            try:
                await self.poll_once()
            except DeliveryError as exc:
                # Kafka unavailable: keep the file where it is and retry on the next poll
                self.stats.failures += 1
                log.error("file source %s: not persisted (%s); will retry", self.name, exc)
            except OSError as exc:
                # the inbox itself misbehaves (permissions, full disk): keep polling, say so
                self.stats.failures += 1
                log.error("file source %s: %s; will retry", self.name, exc)
            await asyncio.sleep(self.options.poll_interval_s)

    # -- one pass -----------------------------------------------------------------

    def _ready_files(self) -> Iterator[Path]:
        now = time.monotonic()
        entries = []
        for p in self.inbox.iterdir():
            if p.name.startswith(".") or p.name.endswith((".tmp", ".part", ".partial")) or not p.is_file():
                continue
            st = p.stat()
            entries.append((st.st_mtime_ns, p, st))
        live = set()
        for _, p, st in sorted(entries, key=lambda e: (e[0], e[1].name)):
            live.add(p.name)
            sig = (st.st_size, st.st_mtime_ns)
            prev = self._seen.get(p.name)
            if prev is None or prev[:2] != sig:
                self._seen[p.name] = (*sig, now)
                if self.options.settle_s > 0:
                    continue
            elif now - prev[2] < self.options.settle_s:
                continue
            yield p
        for gone in set(self._seen) - live:
            del self._seen[gone]

    async def poll_once(self) -> int:
        """Ingest every settled file in the inbox; returns how many files were finished."""
        finished = 0
        async with self._lock:
            self._pass_tails = None
            for path in list(self._ready_files()):
                if not path.exists():
                    continue
                self.stats.current = path.name
                try:
                    await self.ingest_file(path)
                    finished += 1
                finally:
                    self.stats.current = None
        return finished

    async def ingest_file(self, path: Path) -> None:
        try:
            data = self._read(path)
            digest = hashlib.sha256(data).hexdigest()
            records = self._split(path, data)
        except FileFailure as exc:
            self._fail(path, str(exc))
            return
        progress, resumed = await asyncio.to_thread(self._load_progress, path.name, digest)
        already: set[int] = set()
        if resumed and progress.produced < len(records):
            already = await asyncio.to_thread(self._delivered_since, progress, path.name)
        if already:
            log.info("file source %s: %s: %d records already delivered before a restart", self.name, path.name,
                     len(already))
        self.stats.resumed_skipped += progress.produced + len(already)
        self._save_progress(path.name, progress)  # first checkpoint: the tail offsets to scan after a crash
        received_at = utc_now_iso()
        chunk = self.options.chunk_records
        for start in range(progress.produced, len(records), chunk):
            batch = [r for r in records[start:start + chunk] if r.index not in already]
            t0 = time.monotonic()
            results = await asyncio.gather(*(self._produce(path.name, digest, r, received_at) for r in batch))
            for topic, partition, offset in results:
                parts = progress.tails.setdefault(topic, {})
                parts[str(partition)] = max(parts.get(str(partition), 0), offset + 1)
            progress.produced = min(start + chunk, len(records))
            self._save_progress(path.name, progress)
            if self.options.max_records_per_s:
                await asyncio.sleep(max(0.0, len(batch) / self.options.max_records_per_s - (time.monotonic() - t0)))
        self._move(path, self.done_dir)
        self._progress_path(path.name).unlink(missing_ok=True)
        self.stats.files_done += 1
        log.info("file source %s: %s done (%d records)", self.name, path.name, len(records))

    # -- steps --------------------------------------------------------------------

    def _read(self, path: Path) -> bytes:
        size = path.stat().st_size
        if size > self.options.max_file_bytes:
            raise FileFailure(f"file of {size} bytes exceeds max_file_bytes={self.options.max_file_bytes}")
        try:
            return path.read_bytes()
        except OSError as exc:
            raise FileFailure(f"cannot read file: {exc.strerror}") from exc

    def _split(self, path: Path, data: bytes) -> list[Record]:
        is_ndjson = path.suffix.lower() in (".ndjson", ".jsonl")
        if self.format == "fhir":
            if not is_ndjson:
                raise FileFailure(f"a fhir file source takes .ndjson files, got {path.name!r}")
            return ndjson_records(data, self.options.max_record_bytes, self.options.max_depth)
        if is_ndjson:
            raise FileFailure("an hl7v2 file source does not take .ndjson files (declare a format: fhir source)")
        return hl7_records(data, self.options.max_record_bytes)

    async def _produce(self, file_name: str, digest: str, rec: Record, received_at: str) -> tuple[str, int, int]:
        assert self._producer is not None
        where = [(FILE_NAME, file_name), (FILE_SHA, digest), (FILE_INDEX, str(rec.index))]
        if rec.line is not None:
            where.append((FILE_LINE, str(rec.line)))
        if rec.error is not None:
            hdrs = ingest_rejection_headers(source=self.name, raw_topic=self.topic, reason=rec.error,
                                            error_class=rec.error_class, received_at=received_at, extra=where)
            partition, offset = await self._producer.send(DLQ_INGEST, rec.payload, headers=hdrs)
            self.stats.dlq += 1
            return DLQ_INGEST, partition, offset
        event_id = event_id_for(self.name, rec.payload)
        hdrs = H.encode([(H.SOURCE, self.name), (H.EVENT_ID, event_id), (H.RECEIVED_AT, received_at),
                         (H.TRACEPARENT, H.traceparent_for(event_id)),
                         *where])
        partition, offset = await self._producer.send(self.topic, rec.payload, key=rec.key, headers=hdrs)
        self.stats.records += 1
        return self.topic, partition, offset

    def _fail(self, path: Path, reason: str) -> None:
        log.warning("file source %s: %s refused: %s", self.name, path.name, reason)
        target = self._move(path, self.error_dir)
        target.with_name(target.name + ".reason.txt").write_text(reason + "\n")
        self._progress_path(path.name).unlink(missing_ok=True)
        self.stats.files_error += 1

    def _move(self, path: Path, folder: Path) -> Path:
        target = folder / path.name
        if target.exists():  # a re-sent file of the same name: keep both
            target = folder / f"{path.stem}.{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}{path.suffix}"
        os.replace(path, target)
        return target

    # -- progress -----------------------------------------------------------------

    def _progress_path(self, name: str) -> Path:
        return self.progress_dir / f"{name}.json"

    def _load_progress(self, name: str, digest: str) -> tuple[Progress, bool]:
        try:
            raw = orjson.loads(self._progress_path(name).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            raw = None
        if isinstance(raw, dict) and raw.get("sha256") == digest:
            return Progress(digest, int(raw.get("produced", 0)), raw.get("tails") or {}), True
        # no progress (or another file of the same name): start at the current end of the topics
        if self._pass_tails is None:
            self._pass_tails = self._current_tails()
        return Progress(digest, 0, {t: dict(p) for t, p in self._pass_tails.items()}), False

    def _save_progress(self, name: str, progress: Progress) -> None:
        path = self._progress_path(name)
        tmp = path.with_name(path.name + ".tmp")
        body = {"file": name, "sha256": progress.sha256, "produced": progress.produced, "tails": progress.tails,
                "updated_at": utc_now_iso()}
        with open(tmp, "wb") as fh:
            fh.write(orjson.dumps(body))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def _drop_stale_progress(self) -> None:
        for p in self.progress_dir.glob("*.json"):
            if not (self.inbox / p.name.removesuffix(".json")).exists():
                p.unlink(missing_ok=True)

    def _consumer(self) -> Consumer:
        return Consumer(self.settings.librdkafka(**{
            "group.id": f"clinstream-filedrop-{uuid.uuid4().hex[:10]}",  # assign() only, never commits
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 20,  # read to the end and stop: no long empty fetches
        }))

    def _current_tails(self) -> dict[str, dict[str, int]]:
        # A lower bound is enough (the resume scan only reads more); ListOffsets answers on some
        # brokers lag the true end, which is still a lower bound.
        consumer = self._consumer()
        try:
            md = consumer.list_topics(timeout=10)
            out: dict[str, dict[str, int]] = {}
            for topic in (self.topic, DLQ_INGEST):
                if topic not in md.topics:
                    continue
                out[topic] = {}
                for p in md.topics[topic].partitions:
                    _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                    out[topic][str(p)] = max(0, high - 1)
            return out
        finally:
            consumer.close()

    def _delivered_since(self, progress: Progress, name: str) -> set[int]:
        """Indices of this file's records that reached Kafka after the last checkpoint."""
        consumer = self._consumer()
        found: set[int] = set()
        try:
            md = consumer.list_topics(timeout=10)
            assignment = []
            for topic in (self.topic, DLQ_INGEST):
                if topic not in md.topics:
                    continue
                tails = progress.tails.get(topic, {})
                for p in md.topics[topic].partitions:
                    assignment.append(TopicPartition(topic, p, tails.get(str(p), OFFSET_BEGINNING)))
            if not assignment:
                return found
            todo = {(tp.topic, tp.partition) for tp in assignment}
            consumer.assign(assignment)
            deadline = time.monotonic() + 60
            while todo and time.monotonic() < deadline:
                for msg in consumer.consume(1000, 0.1):
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            todo.discard((msg.topic(), msg.partition()))
                        continue
                    h = H.as_dict(msg.headers())
                    if h.get(FILE_SHA) == progress.sha256 and h.get(FILE_NAME) == name:
                        found.add(int(h.get(FILE_INDEX, "-1")))
            if todo:
                raise DeliveryError(f"could not read back {sorted(todo)} to resume {name}")
            return found
        finally:
            consumer.close()


@register_source("file")
def _create(spec: SourceSpec, settings: KafkaSettings) -> FileDropSource:
    return FileDropSource(spec.name, spec.raw_topic, spec.format, parse_options(FileDropOptions, spec), settings)
