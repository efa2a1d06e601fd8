"""Shared fixtures: the HL7 v2 sample corpus."""

from __future__ import annotations

import pytest

from streams.normalize.hl7v2.samples import message_files, samples_dir


@pytest.fixture(scope="session")
def corpus() -> dict[str, bytes]:
    files = message_files()
    assert files, f"HL7 v2 corpus not found under {samples_dir()} (set CLINSTREAM_SAMPLES_DIR)"
    return {p.stem: p.read_bytes() for p in files}
