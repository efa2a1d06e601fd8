"""The file-drop source against a real broker: batches, NDJSON, refused files, crash and resume."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from connectors.sources.filedrop import DLQ_INGEST, FILE_INDEX, FILE_LINE, FILE_NAME, FileDropOptions, FileDropSource
from schemas import headers as H
from tests.support.topics import create_topics, read_all
from topology.settings import KafkaSettings

REPO = Path(__file__).resolve().parents[3]


def hl7(i: int) -> str:
    return f"MSH|^~\\&|LAB|H|CLIN|H|20240101||ORU^R01|C{i:05d}|P|2.5\rPID|1||M{i:05d}^^^H^MR\rOBX|1|NM|HB||13\r"


def batch_file(n: int, bad: set[int] = frozenset()) -> bytes:  # type: ignore[assignment]
    msgs = [hl7(i).replace("ORU^R01", "") if i in bad else hl7(i) for i in range(n)]
    return (f"FHS|^~\\&|LAB\rBHS|^~\\&|LAB\r{''.join(msgs)}BTS|{n}\rFTS|1\r").encode()


def make_source(kafka_bootstrap: str, inbox: Path, name: str, fmt: str = "hl7v2", **opts: object) -> FileDropSource:
    topic = f"raw.{fmt}.{name}"
    create_topics(kafka_bootstrap, [topic, DLQ_INGEST], partitions=2)
    options = FileDropOptions(directory=str(inbox), settle_s=0, poll_interval_s=0.1, **opts)
    return FileDropSource(name, topic, fmt, options, KafkaSettings(bootstrap_servers=kafka_bootstrap))


async def until_files_handled(src: FileDropSource, count: int, timeout_s: float = 20) -> None:
    """Let the source's own poll loop work until ``count`` files reached done/ or error/."""
    deadline = time.monotonic() + timeout_s
    while src.stats.files_done + src.stats.files_error < count:
        assert time.monotonic() < deadline, src.health()
        await asyncio.sleep(0.05)


def dlq_of(kafka_bootstrap: str, name: str) -> list:
    return [m for m in read_all(kafka_bootstrap, DLQ_INGEST) if H.as_dict(m.headers()).get(H.SOURCE) == name]


async def test_batch_and_single_files_go_to_done_with_bad_messages_on_the_dlq(kafka_bootstrap, unique_name, tmp_path):
    name = unique_name("fd")
    src = make_source(kafka_bootstrap, tmp_path, name, chunk_records=4)
    (tmp_path / "batch.hl7").write_bytes(batch_file(10, bad={3}))
    (tmp_path / "single.hl7").write_bytes(hl7(99).encode())
    (tmp_path / "broken.hl7").write_bytes(batch_file(5)[:-12])  # BTS/FTS cut off: truncated transfer
    (tmp_path / "wrong.ndjson").write_bytes(b'{"resourceType":"Patient"}\n')
    await src.start()
    try:
        await until_files_handled(src, 4)
    finally:
        await src.stop()
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == ["batch.hl7", "single.hl7"]
    errors = tmp_path / "error"
    assert sorted(p.name for p in errors.iterdir()) == ["broken.hl7", "broken.hl7.reason.txt", "wrong.ndjson",
                                                         "wrong.ndjson.reason.txt"]
    assert "truncated" in (errors / "broken.hl7.reason.txt").read_text()
    assert not any((tmp_path / ".progress").iterdir())
    records = read_all(kafka_bootstrap, src.topic, expect=10)
    assert len(records) == 10
    assert {r.value() for r in records} == {hl7(i).encode() for i in (*range(10), 99) if i != 3}
    h = H.as_dict(next(r for r in records if r.value() == hl7(5).encode()).headers())
    assert h[FILE_NAME] == "batch.hl7" and h[FILE_INDEX] == "5" and h[H.SOURCE] == name and h[H.EVENT_ID]
    dlq = dlq_of(kafka_bootstrap, name)
    assert len(dlq) == 1 and dlq[0].value() == hl7(3).replace("ORU^R01", "").encode()
    dh = H.as_dict(dlq[0].headers())
    assert dh[FILE_NAME] == "batch.hl7" and dh[FILE_INDEX] == "3" and "MSH-9" in dh[H.ERROR_MESSAGE]


async def test_ndjson_file_one_resource_per_line(kafka_bootstrap, unique_name, tmp_path):
    name = unique_name("fdj")
    src = make_source(kafka_bootstrap, tmp_path, name, fmt="fhir")
    lines = [orjson.dumps({"resourceType": "Observation", "subject": {"reference": f"Patient/{i}"}}) for i in range(5)]
    (tmp_path / "export.ndjson").write_bytes(b"\n".join([*lines[:2], b'{"resourceType": ', *lines[2:]]) + b"\n")
    await src.start()
    try:
        await until_files_handled(src, 1)
    finally:
        await src.stop()
    records = read_all(kafka_bootstrap, src.topic, expect=5)
    assert sorted(r.value() for r in records) == sorted(lines)
    assert {r.key() for r in records} == {f"Patient/{i}".encode() for i in range(5)}
    dlq = dlq_of(kafka_bootstrap, name)
    assert len(dlq) == 1 and H.as_dict(dlq[0].headers())[FILE_LINE] == "3"
    assert (tmp_path / "done" / "export.ndjson").exists()


RUNNER = """
import asyncio, sys
from connectors.sources.filedrop import FileDropOptions, FileDropSource
from topology.settings import KafkaSettings
bootstrap, inbox, name = sys.argv[1:4]
async def main():
    opts = FileDropOptions(directory=inbox, settle_s=0, poll_interval_s=0.1, chunk_records=20, max_records_per_s=400)
    src = FileDropSource(name, "raw.hl7v2." + name, "hl7v2", opts, KafkaSettings(bootstrap_servers=bootstrap))
    await src.start()
    await asyncio.sleep(3600)
asyncio.run(main())
"""


async def test_resume_after_sigkill_mid_file_gives_exactly_n_records(kafka_bootstrap, unique_name, tmp_path):
    n = 400
    name = unique_name("fdk")
    topic = f"raw.hl7v2.{name}"
    create_topics(kafka_bootstrap, [topic, DLQ_INGEST], partitions=2)
    (tmp_path / "big.hl7").write_bytes(batch_file(n))
    progress = tmp_path / ".progress" / "big.hl7.json"
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, kafka_bootstrap, str(tmp_path), name], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.DEVNULL)
    first_checkpoint = None
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                state = orjson.loads(progress.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                time.sleep(0.01)
                continue
            if first_checkpoint is None:
                # Usually produced == 0 (tails at the start); on a loaded machine the first chunk may
                # already be in. Either way it is older than what gets delivered before the kill.
                first_checkpoint = progress.read_bytes()
            if state["produced"] >= 100:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert first_checkpoint is not None
    assert (tmp_path / "big.hl7").exists(), "killed before the end: the file must still be in the inbox"
    delivered = len(read_all(kafka_bootstrap, topic, expect=100))
    assert orjson.loads(first_checkpoint)["produced"] < 100 <= delivered < n
    # Worst case: the crash came right after a chunk was delivered but before any checkpoint
    # was written. Put the first checkpoint back: resume must find the delivered records itself.
    progress.write_bytes(first_checkpoint)

    src = FileDropSource(name, topic, "hl7v2",
                         FileDropOptions(directory=str(tmp_path), settle_s=0, chunk_records=50),
                         KafkaSettings(bootstrap_servers=kafka_bootstrap))
    await src.start()
    try:
        await until_files_handled(src, 1)
    finally:
        await src.stop()
    records = read_all(kafka_bootstrap, topic, expect=n + 1, timeout_s=3)  # waits a little for any extra
    assert len(records) == n
    assert sorted(int(H.as_dict(r.headers())[FILE_INDEX]) for r in records) == list(range(n))
    assert src.stats.resumed_skipped >= 100 and src.stats.records == n - src.stats.resumed_skipped
    assert (tmp_path / "done" / "big.hl7").exists() and not progress.exists()
