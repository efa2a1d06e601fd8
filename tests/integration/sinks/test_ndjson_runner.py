"""NDJSON sink behind the SinkRunner: resumes from offsets.json, not from the group."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson

from connectors.sinks.registry import create_sink
from connectors.sinks.runner import SinkRunner
from tests.integration.sinks.conftest import Dest
from tests.support.events import RunnerThread, make_event, produce, wait_until
from topology.model import SinkSpec


def _committed(root: Path, topic: str) -> dict[int, int]:
    out = {}
    for commit in (root / topic).glob("p*/offsets.json"):
        data = orjson.loads(commit.read_bytes())
        out[int(data["partition"])] = int(data["next_offset"])
    return out


def _event_ids(root: Path, topic: str) -> list[str]:
    return [orjson.loads(line)["event_id"] for f in sorted((root / topic).glob("p*/*.ndjson"))
            for line in f.read_bytes().splitlines()]


def test_ndjson_sink_restart_resumes_from_commit_record(
    dest: Dest, tmp_path: Path, unique_name: Callable[[str], str]
) -> None:
    def runner() -> SinkRunner:
        spec = SinkSpec(kind="ndjson", options={"directory": str(tmp_path), "roll_bytes": 20_000})
        sink = create_sink(spec, dest.name, dest.settings)
        return SinkRunner(sink, topic=dest.topic, settings=dest.settings, group_id=unique_name("g"),
                          poll_timeout_s=0.2, commit_to_kafka=False)

    expected = produce(dest.bootstrap, dest.topic, [make_event(i, dest.name) for i in range(200)])
    with RunnerThread(runner()) as rt:
        wait_until(lambda: (rt.check(), _committed(tmp_path, dest.topic) == expected)[1], 30, "first 200")
    expected |= produce(dest.bootstrap, dest.topic, [make_event(i, dest.name) for i in range(200, 260)])
    with RunnerThread(runner()) as rt2:
        wait_until(lambda: (rt2.check(), _committed(tmp_path, dest.topic) == expected)[1], 30, "next 60")
    assert rt2.result.delivered == 60
    ids = _event_ids(tmp_path, dest.topic)
    assert len(ids) == len(set(ids)) == 260
    assert len(list((tmp_path / dest.topic).glob("p*/*.ndjson"))) > 3, "files should have rolled by size"
