from __future__ import annotations

import argparse
import json
import random

import pytest

from streams.identity.bench import add_bench_mpi_parser
from streams.identity.synthetic import build_pools, corrupt, synthetic_patients, typo


def test_synthetic_patients_are_seeded_and_distinct() -> None:
    pools = build_pools(3, n_streets=200, n_places=300)
    a = synthetic_patients(500, seed=5, pools=pools)
    b = synthetic_patients(500, seed=5, pools=pools)
    assert a == b
    assert len({r.record_id for r in a}) == 500
    assert all(r.given and r.family and r.birth_date and r.identifiers for r in a)


def test_corruption_changes_the_record_but_keeps_the_person() -> None:
    rng = random.Random(1)
    pools = build_pools(3, n_streets=50, n_places=50)
    person = synthetic_patients(1, seed=2, pools=pools)[0]
    dup = corrupt(person, rng, 2, "d1", "hie")
    assert dup.record_id == "d1" and dup.identifiers == () and dup != person
    assert len(typo("abcdef", random.Random(9))) in {5, 6, 7}


def test_bench_cli_small_index(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="clinstream bench")
    add_bench_mpi_parser(parser.add_subparsers(dest="bench"))
    args = parser.parse_args(["mpi", "--index-size", "3000", "--lookups", "500", "--skip-febrl", "--json"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["index_size"] == 3000 and report["lookups_per_s"] > 0
    assert report["false_auto_links"] <= 2
    assert report["auto_link_rate_repeat"] >= 0.99
