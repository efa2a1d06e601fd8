"""Locate the shared HL7 v2 sample corpus (tests, bench)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
_RELATIVE = Path("shared") / "data" / "hl7v2-samples"


def samples_dir() -> Path:
    """``$CLINSTREAM_SAMPLES_DIR``, else ``<repo root>/../shared/data/hl7v2-samples``.

    When the repository is a git worktree nested one level deeper (``<x>/wt/<name>``)
    the default is looked for one directory further up as well.
    """
    env = os.environ.get("CLINSTREAM_SAMPLES_DIR")
    if env:
        return Path(env)
    default = REPO_ROOT.parent / _RELATIVE
    if default.is_dir():
        return default
    nested = REPO_ROOT.parent.parent / _RELATIVE
    return nested if nested.is_dir() else default


def message_files() -> list[Path]:
    return sorted((samples_dir() / "messages").glob("*.hl7"))


def expected_bundle_path(stem: str) -> Path | None:
    """Reference bundle for a corpus message (``expected-fhir/<TRIGGER>/<stem>-expected.json``)."""
    hits = sorted((samples_dir() / "expected-fhir").glob(f"*/{stem}-expected.json"))
    return hits[0] if hits else None
