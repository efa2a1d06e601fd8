"""`clinstream bench consume` runs the three deliveries over the same records and reports each."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.consume_bench import run_consume_bench


@pytest.mark.timeout(240)
def test_every_delivery_consumes_every_record_and_reports_its_cost(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run_consume_bench(records=1500, rounds=1, timeout_s=180)
    assert list(tmp_path.iterdir()) == []  # the children's Faust data dirs stay in the bench's temp dir
    for mode in ("faust", "lean", "fetch"):
        (run,) = result[f"{mode}_runs"]
        assert run["mode"] == mode
        assert run["records"] >= 1000  # everything after the first batch, which is not measured
        assert result[f"{mode}_cpu_us_per_record"] > 0 and result[f"{mode}_records_per_s"] > 0
    assert result["cpu_ratio_faust_over_lean"] == pytest.approx(
        result["faust_cpu_us_per_record"] / result["lean_cpu_us_per_record"], rel=0.01)
    assert result["cpu_ratio_lean_over_fetch"] == pytest.approx(
        result["lean_cpu_us_per_record"] / result["fetch_cpu_us_per_record"], rel=0.01)
