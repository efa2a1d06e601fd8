"""NDJSON files sink: rolling files per partition, committed atomically with the offsets.

Layout under ``directory``::

    <topic>/p<partition>/<topic>-p<partition>-<first offset, 20 digits>.ndjson   data, one event per line
    <topic>/p<partition>/offsets.json                                          the commit record

A write appends the batch's lines to the partition's current file, ``fsync``s it, and
only then replaces ``offsets.json`` (temp file + ``fsync`` + ``os.replace`` + directory
``fsync``) with ``{next_offset, file, bytes}``: the committed length of the current file
and where Kafka should resume. ``offsets.json`` is the commit point.

Why no deduplication by event id is needed: a crash can leave bytes after the committed
length (data written, commit record not yet replaced) or a freshly rolled file the commit
record does not name yet. On restart, before resuming, every partition is cut back to what
``offsets.json`` says: the current file is truncated to ``bytes`` and files after it are
deleted. Those bytes belonged to records at or after ``next_offset``, which is exactly where
consumption resumes, so each record ends up in the files once — the same exactly-once
effect as the Postgres sink's single transaction, without an id index.

Readers: files other than the one named in ``offsets.json`` are complete; the current file
is complete up to ``bytes``. Partitions commit independently (one ``offsets.json`` each),
which is all ordering needs: Kafka only orders within a partition.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import Field

from connectors.sinks.base import Sink, SinkBatch, SinkOptions
from connectors.sinks.errors import SinkConfigError, SinkRetryable
from connectors.sinks.registry import register_sink

log = logging.getLogger(__name__)

OFFSETS_FILE = "offsets.json"
SAFE_RE = re.compile(r"[^A-Za-z0-9._-]")


class NdjsonOptions(SinkOptions):
    directory: str = Field(description="root directory of the files (created if missing)")
    roll_bytes: int = Field(default=64 * 1024 * 1024, ge=1, description="start a new file past this size")
    roll_seconds: float = Field(default=3600.0, gt=0, description="start a new file when the current is this old")
    fsync: bool = Field(default=True, description="fsync data and commit record (off only for throw-away output)")


@dataclass
class _PartitionState:
    directory: Path
    next_offset: int | None = None
    file: str | None = None
    bytes: int = 0
    opened_at: float = 0.0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@register_sink("ndjson")
class NdjsonSink(Sink):
    Options = NdjsonOptions
    stores_offsets = True
    options: NdjsonOptions

    def __init__(self, options: NdjsonOptions, destination: str, settings: Any = None) -> None:  # type: ignore[override]
        super().__init__(options, destination, settings)
        self.root = Path(options.directory)
        self._parts: dict[tuple[str, int], _PartitionState] = {}
        self.lines_written = 0

    def start(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkConfigError("sink.options.directory", f"cannot create {self.root}: {exc.strerror}") from exc
        if not os.access(self.root, os.W_OK):
            raise SinkConfigError("sink.options.directory", f"{self.root} is not writable")

    def health(self) -> dict[str, Any]:
        ok = self.root.is_dir() and os.access(self.root, os.W_OK)
        return {"sink": self.kind, "destination": self.destination, "ok": ok, "directory": str(self.root),
                "lines_written": self.lines_written, "partitions": len(self._parts)}

    # --- recovery --------------------------------------------------------------------------
    def _partition_dir(self, topic: str, partition: int) -> Path:
        return self.root / SAFE_RE.sub("_", topic) / f"p{partition}"

    def _file_name(self, topic: str, partition: int, first_offset: int) -> str:
        return f"{SAFE_RE.sub('_', topic)}-p{partition}-{first_offset:020d}.ndjson"

    def _recover(self, topic: str, partition: int) -> _PartitionState:
        """Load the commit record and cut the partition's files back to it."""
        pdir = self._partition_dir(topic, partition)
        state = _PartitionState(pdir)
        commit = pdir / OFFSETS_FILE
        if commit.exists():
            data = orjson.loads(commit.read_bytes())
            state.next_offset = int(data["next_offset"])
            state.file = data.get("file")
            state.bytes = int(data.get("bytes", 0))
            state.opened_at = float(data.get("opened_at", 0.0))
        if pdir.is_dir():
            for path in sorted(pdir.glob("*.ndjson")):
                if state.file is None or path.name > state.file:
                    # Created by a roll whose commit never happened: only uncommitted records inside.
                    log.warning("ndjson sink %s: removing uncommitted file %s", self.destination, path.name)
                    path.unlink()
                elif path.name == state.file and path.stat().st_size > state.bytes:
                    log.warning("ndjson sink %s: truncating %s from %d to committed %d bytes", self.destination,
                                path.name, path.stat().st_size, state.bytes)
                    with path.open("r+b") as fh:
                        fh.truncate(state.bytes)
                        os.fsync(fh.fileno())
        if state.file is not None and not (pdir / state.file).exists():
            # Committed file gone (someone moved it away): never append to a stranger's name, start afresh.
            state.file, state.bytes = None, 0
        self._parts[(topic, partition)] = state
        return state

    def committed_offsets(self, topic: str, partitions: list[int]) -> dict[int, int]:
        out: dict[int, int] = {}
        for p in partitions:
            try:
                state = self._recover(topic, p)
            except OSError as exc:
                raise SinkRetryable(f"cannot recover partition {p} files: {exc}") from exc
            if state.next_offset is not None:
                out[p] = state.next_offset
        return out

    # --- write -----------------------------------------------------------------------------
    def write(self, batches: list[SinkBatch]) -> None:
        for batch in batches:
            try:
                self._write_one(batch)
            except OSError as exc:
                # Disk full, I/O error: the commit record was not replaced, so the partial tail
                # is cut off by the recovery below before the retry.
                self._recover(batch.topic, batch.partition)
                raise SinkRetryable(f"writing {batch.topic}[{batch.partition}] failed: {exc}") from exc

    def _write_one(self, batch: SinkBatch) -> None:
        key = (batch.topic, batch.partition)
        state = self._parts.get(key) or self._recover(batch.topic, batch.partition)
        fsync = self.options.fsync
        if batch.records:
            payload = b"".join(orjson.dumps(r.event) + b"\n" for r in batch.records)
            now = time.time()
            if (
                state.file is None
                or state.bytes >= self.options.roll_bytes
                or now - state.opened_at >= self.options.roll_seconds
            ):
                state.directory.mkdir(parents=True, exist_ok=True)
                new_name = self._file_name(batch.topic, batch.partition, batch.records[0].offset)
                if new_name == state.file:  # rolling onto the same first offset (replay): keep appending
                    pass
                else:
                    state.file, state.bytes, state.opened_at = new_name, 0, now
                    # The new file is only "committed" once offsets.json names it (below).
                    (state.directory / new_name).open("wb").close()
                    if fsync:
                        _fsync_dir(state.directory)
            path = state.directory / state.file  # type: ignore[operator]
            with path.open("r+b") as fh:
                # Write at the committed length: anything past it is uncommitted by definition.
                fh.seek(state.bytes)
                fh.write(payload)
                fh.truncate()
                fh.flush()
                if fsync:
                    os.fsync(fh.fileno())
            new_bytes = state.bytes + len(payload)
        else:
            new_bytes = state.bytes
        self._commit(state, batch.topic, batch.partition, batch.next_offset, new_bytes)
        self.lines_written += len(batch.records)

    def _commit(self, state: _PartitionState, topic: str, partition: int, next_offset: int, new_bytes: int) -> None:
        state.directory.mkdir(parents=True, exist_ok=True)
        record = {
            "consumer": self.consumer_name, "topic": topic, "partition": partition, "next_offset": next_offset,
            "file": state.file, "bytes": new_bytes, "opened_at": state.opened_at, "committed_at": time.time(),
        }
        tmp = state.directory / f".{OFFSETS_FILE}.tmp"
        with tmp.open("wb") as fh:
            fh.write(orjson.dumps(record, option=orjson.OPT_INDENT_2))
            fh.flush()
            if self.options.fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, state.directory / OFFSETS_FILE)
        if self.options.fsync:
            _fsync_dir(state.directory)
        state.next_offset, state.bytes = next_offset, new_bytes

    def stop(self) -> None:
        # Files are closed after every write; forgetting the state forces recovery on the next start.
        self._parts.clear()
