"""The agents' take_events batching is a setting (CLINSTREAM_BATCH_*), validated when the worker starts."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from streams.app import AgentBatchSettings


def test_defaults_are_the_measured_ones():
    batch = AgentBatchSettings()
    assert (batch.size, batch.within_ms, batch.idle_ms) == (500, 40, 5)


def test_the_environment_sets_them(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CLINSTREAM_BATCH_WITHIN_MS", "10")
    monkeypatch.setenv("CLINSTREAM_BATCH_SIZE", "100")
    monkeypatch.setenv("CLINSTREAM_BATCH_IDLE_MS", "2")
    batch = AgentBatchSettings()
    assert (batch.size, batch.within_ms, batch.idle_ms) == (100, 10, 2)


@pytest.mark.parametrize(("key", "value", "field"), [("CLINSTREAM_BATCH_WITHIN_MS", "0", "within_ms"),
                                                     ("CLINSTREAM_BATCH_SIZE", "many", "size"),
                                                     ("CLINSTREAM_BATCH_IDLE_MS", "0", "idle_ms")])
def test_a_bad_setting_names_its_key(monkeypatch: pytest.MonkeyPatch, key: str, value: str, field: str):
    monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError, match=field):
        AgentBatchSettings()
