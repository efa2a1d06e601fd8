"""`clinstream bench mllp` drives the listener in its own process and reports its CPU per message."""

from __future__ import annotations

import pytest

from connectors.sources.mllp.bench import run_mllp_bench


@pytest.mark.timeout(180)
def test_closed_loop_load_is_acked_and_the_listener_cpu_is_reported(kafka_bootstrap: str) -> None:
    result = run_mllp_bench(kafka_bootstrap, connections=4, messages=400, warmup=20)
    assert (result["acked"], result["errors"]) == (400, 0)
    assert result["msgs_per_s"] > 0 and 0 < result["p50_ms"] <= result["p99_ms"]
    # the listener does real work per message (receive, persist, ACK): more than nothing, less than a second
    assert 0 < result["listener_cpu_ms_per_msg"] < 1000
