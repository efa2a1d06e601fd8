"""``worker_collector``: a bench measures under the collector a long-running process has, then gives CPython's back."""

from __future__ import annotations

import gc

from topology.runtime import GcSettings, worker_collector


def test_the_worker_collector_applies_inside_and_is_undone_after() -> None:
    before = gc.get_threshold()
    kept = [[i] for i in range(1000)]  # alive when the heap is frozen
    with worker_collector(GcSettings(gen0=12_345, gen1=7, gen2=9, freeze=True)) as settings:
        assert settings.gen0 == 12_345
        assert gc.get_threshold() == (12_345, 7, 9)
        assert gc.get_freeze_count() >= len(kept)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_no_freeze_when_the_settings_say_so() -> None:
    gc.unfreeze()
    with worker_collector(GcSettings(freeze=False)):
        assert gc.get_freeze_count() == 0


def test_undone_when_the_measurement_raises() -> None:
    before = gc.get_threshold()
    try:
        with worker_collector(GcSettings(gen0=999)):
            raise RuntimeError("measurement failed")
    except RuntimeError:
        pass
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
