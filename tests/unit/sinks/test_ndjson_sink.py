"""NDJSON sink: commit record, truncate-to-committed on restart, rolling, strict options."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from connectors.sinks import SinkBatch, SinkConfigError, SinkRecord, create_sink
from connectors.sinks.ndjson import NdjsonSink
from tests.support.events import make_event
from topology.model import SinkSpec

TOPIC = "dest.files"


def _sink(directory: Path, **options: object) -> NdjsonSink:
    sink = create_sink(SinkSpec(kind="ndjson", options={"directory": str(directory), **options}), "files")
    assert isinstance(sink, NdjsonSink)
    sink.start()
    return sink


def _batch(partition: int, offsets: range) -> SinkBatch:
    return SinkBatch(TOPIC, partition, [SinkRecord(o, None, make_event(o, "files")) for o in offsets])


def _pdir(root: Path, partition: int = 0) -> Path:
    return root / TOPIC / f"p{partition}"


def _lines(root: Path, partition: int = 0) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for path in sorted(_pdir(root, partition).glob("*.ndjson")):
        out.extend(orjson.loads(line) for line in path.read_bytes().splitlines())
    return out


def test_write_appends_lines_and_commits_offsets(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    assert sink.committed_offsets(TOPIC, [0, 1]) == {}
    sink.write([_batch(0, range(0, 5)), _batch(1, range(0, 2))])
    sink.write([_batch(0, range(5, 8))])

    commit = json.loads((_pdir(tmp_path) / "offsets.json").read_text())
    data_file = _pdir(tmp_path) / commit["file"]
    assert commit["next_offset"] == 8 and commit["partition"] == 0 and commit["topic"] == TOPIC
    assert commit["bytes"] == data_file.stat().st_size
    assert [e["lineage"]["offset"] for e in _lines(tmp_path)] == list(range(8))
    assert len(_lines(tmp_path, 1)) == 2
    assert _sink(tmp_path).committed_offsets(TOPIC, [0, 1, 2]) == {0: 8, 1: 2}


def test_restart_truncates_uncommitted_tail_and_replay_does_not_duplicate(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    sink.committed_offsets(TOPIC, [0])
    sink.write([_batch(0, range(0, 10))])
    commit = json.loads((_pdir(tmp_path) / "offsets.json").read_text())
    data_file = _pdir(tmp_path) / commit["file"]

    # Crash after the data write of offsets 10..12 but before the commit record was replaced,
    # half-way through a line.
    tail = b"".join(orjson.dumps(make_event(o, "files")) + b"\n" for o in range(10, 13))
    with data_file.open("ab") as fh:
        fh.write(tail[: len(tail) - 17])
    assert data_file.stat().st_size > commit["bytes"]

    restarted = _sink(tmp_path)
    assert restarted.committed_offsets(TOPIC, [0]) == {0: 10}
    assert data_file.stat().st_size == commit["bytes"], "uncommitted tail must be cut off"

    # Kafka redelivers from offset 10: every event exactly once, no torn line.
    restarted.write([_batch(0, range(10, 15))])
    assert [e["lineage"]["offset"] for e in _lines(tmp_path)] == list(range(15))


def test_restart_removes_file_of_an_uncommitted_roll(tmp_path: Path) -> None:
    sink = _sink(tmp_path, roll_bytes=1)  # every write rolls
    sink.committed_offsets(TOPIC, [0])
    sink.write([_batch(0, range(0, 3))])
    sink.write([_batch(0, range(3, 6))])
    files = sorted(p.name for p in _pdir(tmp_path).glob("*.ndjson"))
    assert files == [f"dest.files-p0-{0:020d}.ndjson", f"dest.files-p0-{3:020d}.ndjson"]

    # Crash after a roll created the next file and wrote to it, before the commit.
    orphan = _pdir(tmp_path) / f"dest.files-p0-{6:020d}.ndjson"
    orphan.write_bytes(orjson.dumps(make_event(6, "files")) + b"\n")

    restarted = _sink(tmp_path, roll_bytes=1)
    assert restarted.committed_offsets(TOPIC, [0]) == {0: 6}
    assert not orphan.exists()
    restarted.write([_batch(0, range(6, 8))])
    assert [e["lineage"]["offset"] for e in _lines(tmp_path)] == list(range(8))


def test_offsets_only_batch_moves_the_commit(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    sink.committed_offsets(TOPIC, [0])
    sink.write([_batch(0, range(0, 2))])
    sink.write([SinkBatch(TOPIC, 0, [], next_offset=5)])  # offsets 2..4 went to the DLQ
    assert _sink(tmp_path).committed_offsets(TOPIC, [0]) == {0: 5}
    assert len(_lines(tmp_path)) == 2


def test_rolls_by_time(tmp_path: Path) -> None:
    sink = _sink(tmp_path, roll_seconds=0.001)
    sink.committed_offsets(TOPIC, [0])
    sink.write([_batch(0, range(0, 2))])
    import time

    time.sleep(0.01)
    sink.write([_batch(0, range(2, 4))])
    assert len(list(_pdir(tmp_path).glob("*.ndjson"))) == 2


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"directory": "/tmp/x", "roll_byte": 5}, "sink.options.roll_byte"),
        ({"directory": "/tmp/x", "roll_bytes": 0}, "sink.options.roll_bytes"),
        ({}, "sink.options.directory"),
    ],
)
def test_bad_options_name_the_key(options: dict[str, object], key: str) -> None:
    with pytest.raises(SinkConfigError) as info:
        create_sink(SinkSpec(kind="ndjson", options=options), "files")
    assert info.value.key == key
    assert key.removeprefix("sink.options.") in str(info.value)
