"""The file-drop inbox scan: only settled, visible, non-temporary files are picked up."""

from __future__ import annotations

import time
from pathlib import Path

from connectors.sources.filedrop import FileDropOptions, FileDropSource
from topology.settings import KafkaSettings


def source(inbox: Path, settle_s: float) -> FileDropSource:
    opts = FileDropOptions(directory=str(inbox), settle_s=settle_s)
    return FileDropSource("s", "raw.hl7v2.s", "hl7v2", opts, KafkaSettings(bootstrap_servers="127.0.0.1:1"))


def test_a_file_is_ready_only_after_it_stopped_changing(tmp_path: Path):
    src = source(tmp_path, settle_s=0.2)
    f = tmp_path / "a.hl7"
    f.write_bytes(b"MSH")
    (tmp_path / ".hidden").write_bytes(b"x")
    (tmp_path / "b.hl7.part").write_bytes(b"x")
    (tmp_path / "done").mkdir()
    assert list(src._ready_files()) == []  # first sighting
    f.write_bytes(b"MSH|more")  # still being written
    assert list(src._ready_files()) == []
    time.sleep(0.25)
    assert [p.name for p in src._ready_files()] == ["a.hl7"]


def test_without_settle_time_files_are_ready_at_once(tmp_path: Path):
    (tmp_path / "x.hl7").write_bytes(b"MSH")
    assert [p.name for p in source(tmp_path, 0)._ready_files()] == ["x.hl7"]
