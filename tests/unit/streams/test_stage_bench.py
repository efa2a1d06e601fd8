"""`clinstream bench stages`: the worker's stage chains over the pipeline bench's feed, in one process."""

from __future__ import annotations

from streams.bench import bench_message, run_stage_bench, synthetic_pid


def test_every_bench_event_reaches_the_destination_and_every_part_is_measured():
    result = run_stage_bench(events=60, batch=20, warmup=20)
    assert result["events"] == 60 and result["delivered"] == 60  # distinct people: all new, all ADT -> bench-ehr
    parts = result["us_per_event_by_part"]
    assert set(parts) == {"normalize", "dedupe", "identity", "route", "mpi_index_flush", "mpi_index_echo",
                          "chain_plumbing"}
    assert all(v > 0 for k, v in parts.items() if k != "chain_plumbing")
    assert result["us_per_event"] >= sum(v for k, v in parts.items() if k != "chain_plumbing")


def test_the_feed_is_one_new_person_per_index_and_repeatable():
    assert bench_message(7, "T") == bench_message(7, "T")
    assert bench_message(7, "T") != bench_message(7, "L")
    names = {synthetic_pid(i, "MRN").split("|")[5] for i in range(500)}
    assert len(names) == 500
