"""``clinstream convert hl7v2 PATH|- [--pretty] [--out DIR]`` — a thin shell over convert_message."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from schemas.hl7v2.errors import Hl7ParseError
from streams.normalize.hl7v2.convert import convert_message

__all__ = ["add_convert_parser", "add_hl7v2_convert_parser", "convert_command", "convert_directory"]

_SUFFIXES = {".hl7", ".txt", ".er7", ".msg", ""}


def add_convert_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``convert`` (with its ``hl7v2`` format) to the top-level subparsers."""
    convert = subparsers.add_parser("convert", help="convert source messages to FHIR R4 bundles (JSON)")
    formats = convert.add_subparsers(dest="convert_format", metavar="FORMAT", required=True)
    add_hl7v2_convert_parser(formats)
    return convert


def add_hl7v2_convert_parser(formats: Any) -> argparse.ArgumentParser:
    """Add ``hl7v2`` under an existing ``convert`` subparsers (if another module owns ``convert``)."""
    parser = formats.add_parser("hl7v2", help="HL7 v2 (ER7) message(s) → FHIR R4 message Bundle(s)")
    parser.add_argument("path", help="a message file, a directory of them, or - for stdin")
    parser.add_argument("--pretty", action="store_true", help="indent the JSON")
    parser.add_argument("--out", type=Path, help="directory for <stem>.json bundles (required for a directory)")
    parser.add_argument("--source", default="cli", help="source name scoping the deterministic ids")
    parser.set_defaults(func=convert_command)
    return parser


def _dump(bundle: dict[str, Any], pretty: bool) -> bytes:
    return orjson.dumps(bundle, option=orjson.OPT_INDENT_2 if pretty else 0) + b"\n"


def convert_command(args: argparse.Namespace) -> int:
    """Exit 0 on success; 1 with a located reason on stderr when conversion fails."""
    path = str(args.path)
    pretty = bool(getattr(args, "pretty", False))
    out: Path | None = getattr(args, "out", None)
    source = getattr(args, "source", "cli") or "cli"
    if path != "-" and Path(path).is_dir():
        if out is None:
            print("error: converting a directory needs --out DIR", file=sys.stderr)
            return 2
        return convert_directory(Path(path), out, pretty=pretty, source=source)
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        print(f"error: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    name = "stdin" if path == "-" else path
    try:
        bundle = convert_message(raw, source=source)
    except Hl7ParseError as exc:
        print(f"error: {name}: {exc}", file=sys.stderr)
        return 1
    data = _dump(bundle, pretty)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        target = out / f"{'stdin' if path == '-' else Path(path).stem}.json"
        target.write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    return 0


def convert_directory(directory: Path, out: Path, *, pretty: bool = False, source: str = "cli") -> int:
    """One bundle per message file into ``out``; prints a summary table; 1 if any failed."""
    from rich.console import Console
    from rich.table import Table

    out.mkdir(parents=True, exist_ok=True)
    table = Table(title=f"HL7 v2 → FHIR: {directory}")
    for column in ("message", "trigger", "resources", "status"):
        table.add_column(column)
    failed = 0
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in _SUFFIXES)
    for path in files:
        try:
            bundle = convert_message(path.read_bytes(), source=source)
        except Hl7ParseError as exc:
            failed += 1
            table.add_row(path.name, "", "", f"[red]failed: {exc}[/red]")
            continue
        except OSError as exc:
            failed += 1
            table.add_row(path.name, "", "", f"[red]unreadable: {exc.strerror or exc}[/red]")
            continue
        (out / f"{path.stem}.json").write_bytes(_dump(bundle, pretty))
        header = bundle["entry"][0]["resource"]
        trigger = header.get("eventCoding", {}).get("display", "")
        table.add_row(path.name, trigger, str(len(bundle["entry"])), "[green]ok[/green]")
    console = Console()
    console.print(table)
    console.print(f"{len(files) - failed} converted, {failed} failed → {out}")
    return 1 if failed else 0
