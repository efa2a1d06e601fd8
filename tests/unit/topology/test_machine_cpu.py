"""The benches' machine CPU shares (busy / idle / stolen) from two /proc/stat snapshots."""

from __future__ import annotations

import sys

import pytest

from topology.runtime import machine_cpu_shares, machine_cpu_ticks


def test_shares_split_busy_idle_and_steal() -> None:
    # user nice system idle iowait irq softirq steal
    before = (100, 0, 20, 500, 10, 0, 5, 40)
    after = (160, 0, 30, 520, 10, 0, 10, 60)  # +60 user, +10 sys, +20 idle, +5 softirq, +20 steal
    assert machine_cpu_shares(before, after) == {"busy": 65.2, "idle": 17.4, "steal": 17.4}  # of 115 ticks


def test_no_snapshot_or_no_time_gives_nothing() -> None:
    assert machine_cpu_shares((), ()) == {}
    same = (1, 2, 3, 4, 5, 6, 7, 8)
    assert machine_cpu_shares(same, same) == {}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
def test_ticks_read_from_proc_stat_and_only_grow() -> None:
    first = machine_cpu_ticks()
    sum(i * i for i in range(200_000))
    second = machine_cpu_ticks()
    assert len(first) == 8 == len(second)
    assert all(b >= a for a, b in zip(first, second, strict=True))
