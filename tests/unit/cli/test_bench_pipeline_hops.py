"""bench pipeline's latency by hop: each hop is the gap between consecutive stamps of one event."""

from __future__ import annotations

from clinstream.bench_pipeline import HOPS, hop_latencies_ms


def test_each_hop_is_the_gap_between_its_stamps_and_incomplete_events_are_left_out() -> None:
    stamps = {f"e{i}": (1000.0, 1001.0, 1001.0 + 10 * i, 1001.0 + 10 * i + 5, 1001.0 + 10 * i + 5 + 20)
              for i in range(1, 101)}
    stamps["partial"] = (1000.0, 5000.0)  # no dest or delivery stamp: not in any hop
    hops = hop_latencies_ms(stamps)
    assert list(hops) == list(HOPS)
    assert hops["source"] == {"p50": 1.0, "p99": 1.0}
    assert hops["worker"]["p50"] == 505.0 and 990 <= hops["worker"]["p99"] <= 1000
    assert hops["route"] == {"p50": 5.0, "p99": 5.0}
    assert hops["sink"] == {"p50": 20.0, "p99": 20.0}
    assert hop_latencies_ms({}) == {}
