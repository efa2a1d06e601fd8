"""Bench smoke test: runs the benchmark briefly and checks the report shape (not a timed test)."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import orjson

from streams.route.bench import add_bench_route_parser, run_bench


def test_bench_runs_and_reports(tmp_path: Path) -> None:
    result = run_bench(0.05, tmp_path / "no-samples")
    assert result["source"] == "builtin" and result["destinations"] == 5
    assert result["events"] > 0 and result["events_per_s"] > 0
    assert result["destination_events_per_s"] >= result["events_per_s"] * 5 - 5
    assert result["cpu_seconds"] > 0 and result["wall_events_per_s"] > 0
    assert 0 < result["delivered_per_event"] <= 5

    parser = argparse.ArgumentParser()
    add_bench_route_parser(parser.add_subparsers(dest="bench"))
    args = parser.parse_args(["route", "--json", "--seconds", "0.05", "--samples", str(tmp_path)])
    out = io.StringIO()
    assert args.handler(args, out=out) == 0
    body = orjson.loads(out.getvalue())
    assert {"events_per_s", "destination_events_per_s"} <= set(body)
