"""``clinstream bench convert``: our tokenizer and converter vs hl7apy and python-hl7, same run, same corpus."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from schemas.compiled import build_kind
from schemas.hl7v2.parser import parse_message
from streams.normalize.hl7v2.convert import convert_message
from streams.normalize.hl7v2.samples import message_files
from topology.runtime import machine_cpu_shares, machine_cpu_ticks, worker_collector

__all__ = ["add_bench_convert_parser", "bench_convert_command", "run_convert_bench"]


def _rate(fn: Callable[[Any], Any], inputs: list[Any], seconds: float, rounds: int | None) -> tuple[float, int]:
    """Messages per second of ``fn`` over ``inputs`` (cycled), and how many calls raised."""
    done = errors = 0
    start = time.perf_counter()
    deadline = start + seconds
    round_no = 0
    while True:
        for item in inputs:
            try:
                fn(item)
            except Exception:
                errors += 1
            done += 1
            if rounds is None and time.perf_counter() >= deadline:
                return done / (time.perf_counter() - start), errors
        round_no += 1
        if rounds is not None and round_no >= rounds:
            return done / (time.perf_counter() - start), errors


def _cr_text(raw: bytes) -> str:
    """Baselines need CR-separated text; normalise outside the timed loop."""
    text = raw.decode("utf-8", errors="replace").lstrip("\ufeff")
    return "\r".join(line for line in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if line)


def run_convert_bench(
    seconds: float = 2.0, *, rounds: int | None = None, files: list[Path] | None = None,
    baseline_seconds: float | None = None,
) -> dict[str, Any]:
    """Measure parse / parse+map / hl7apy / python-hl7 throughput (messages per second).

    Each measurement runs ``seconds`` (or ``rounds`` passes over the corpus);
    the slow baselines default to a quarter of that, they only need to be
    measured, not waited for.
    """
    paths = files if files is not None else message_files()
    if not paths:
        raise FileNotFoundError("no HL7 v2 sample messages found (set CLINSTREAM_SAMPLES_DIR)")
    corpus = [p.read_bytes() for p in paths]
    texts = [_cr_text(raw) for raw in corpus]
    base = baseline_seconds if baseline_seconds is not None else max(seconds / 4, 0.25)
    result: dict[str, Any] = {"messages": len(corpus), "build": build_kind()}
    machine0 = machine_cpu_ticks()

    def convert(raw: bytes) -> Any:
        return convert_message(raw, source="bench")

    # Parse+map with CPython's default collector, then as the worker's normalize stage runs it
    # (``topology.runtime``: young generation of 50,000, start-up heap frozen): a bundle is ~700
    # containers, so the default collector runs a young pass every message or so.
    result["convert_default_gc_msgs_per_s"], _ = _rate(convert, corpus, seconds, rounds)
    with worker_collector() as gc_settings:
        result["gc_gen0"] = gc_settings.gen0
        result["parse_msgs_per_s"], _ = _rate(parse_message, corpus, seconds, rounds)
        result["convert_msgs_per_s"], result["convert_errors"] = _rate(convert, corpus, seconds, rounds)

    from hl7apy.parser import parse_message as hl7apy_parse

    def hl7apy_one(text: str) -> Any:
        return hl7apy_parse(text, find_groups=False, validation_level=2)  # 2 = tolerant (no validation)

    result["hl7apy_msgs_per_s"], result["hl7apy_errors"] = _rate(hl7apy_one, texts, base,
                                                                 1 if rounds is not None else None)
    import hl7

    result["python_hl7_msgs_per_s"], result["python_hl7_errors"] = _rate(hl7.parse, texts, base,
                                                                         rounds)
    result["machine_cpu_pct"] = machine_cpu_shares(machine0, machine_cpu_ticks())  # steal: a slower machine
    return result


def add_bench_convert_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``convert`` under the ``bench`` command's subparsers."""
    parser = subparsers.add_parser("convert", help="HL7 v2 parse / v2→FHIR throughput vs hl7apy and python-hl7")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement (default 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=bench_convert_command)
    return parser


def bench_convert_command(args: argparse.Namespace) -> int:
    result = run_convert_bench(float(getattr(args, "seconds", 2.0)))
    if getattr(args, "json", False):
        sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"HL7 v2 conversion throughput ({result['messages']} corpus messages, one core, "
                        f"{result['build']} build)")
    table.add_column("measurement")
    table.add_column("msg/s", justify="right")
    table.add_column("target", justify="right")
    table.add_row("parse (ours: segments + MSH, lazy fields)", f"{result['parse_msgs_per_s']:,.0f}", "100,000")
    table.add_row(f"parse + map to FHIR (ours, worker's collector: gen0 {result['gc_gen0']:,})",
                  f"{result['convert_msgs_per_s']:,.0f}", "10,000")
    table.add_row("parse + map to FHIR (ours, CPython's default collector)",
                  f"{result['convert_default_gc_msgs_per_s']:,.0f}", "")
    table.add_row("hl7apy parse_message (no validation, no groups)", f"{result['hl7apy_msgs_per_s']:,.0f}", "")
    table.add_row("python-hl7 hl7.parse", f"{result['python_hl7_msgs_per_s']:,.0f}", "")
    Console().print(table)
    return 0
