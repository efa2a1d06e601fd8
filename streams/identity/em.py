"""Unsupervised estimation of m/u parameters (as Splink does), and ``train(records)``.

1. **u** from random pairs: almost every random pair is two different people, so the level
   frequencies over random pairs estimate P(level | non-match) directly.
2. **m** and λ by expectation-maximisation over the candidate pairs that blocking produces.
   Blocking recall is high (several keys, each tolerant of different typos), so the matches
   among candidate pairs are representative of all matches and their level frequencies are an
   unbiased estimate of m. Inside EM the non-match distribution is also left free, because
   non-matches *within blocks* agree on blocked fields far more often than random pairs do;
   the final model keeps the random-pair u, which is what scoring needs.
3. λ (probability two random records match) = expected matches among candidates / all pairs.

EM runs on the distinct comparison vectors with their counts, so it costs nothing next to
computing the vectors (and needs no numpy: training is part of the runtime package).
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

from streams.identity.blocking import blocking_keys
from streams.identity.comparisons import COMPARISONS, F_FAMILY, F_GIVEN, comparison_vector, features
from streams.identity.model import ComparisonParams, MatchModel, default_model
from streams.identity.record import PatientRecord

_N_LEVELS = [len(c.levels) for c in COMPARISONS]


Pattern = tuple[int, ...]


def comparison_patterns(feats: Sequence[Sequence[str]], pairs: Iterable[tuple[int, int]]) -> Counter[Pattern]:
    """Distinct comparison vectors of the given pairs with their counts."""
    return Counter(comparison_vector(feats[i], feats[j]) for i, j in pairs)


def random_pairs(n: int, max_pairs: int, seed: int) -> list[tuple[int, int]]:
    """Distinct random pairs i < j (all pairs when there are fewer than ``max_pairs``)."""
    total = n * (n - 1) // 2
    if total <= max_pairs:
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    rng = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    while len(seen) < max_pairs:
        i, j = rng.randrange(n), rng.randrange(n)
        if i != j:
            seen.add((i, j) if i < j else (j, i))
    return sorted(seen)


def blocked_pairs(
    feats: Sequence[Sequence[str]], max_block_size: int = 1000, cross: Sequence[int] | None = None
) -> set[tuple[int, int]]:
    """Candidate pairs i < j sharing a blocking key (blocks above ``max_block_size`` skipped).

    ``cross``: optional dataset label per record; pairs within one dataset are dropped
    (linkage rather than deduplication).
    """
    blocks: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(feats):
        for key in blocking_keys(f):
            blocks[key].append(i)
    pairs: set[tuple[int, int]] = set()
    for members in blocks.values():
        if len(members) < 2 or len(members) >= max_block_size:
            continue
        for x, i in enumerate(members):
            for j in members[x + 1 :]:
                if cross is not None and cross[i] == cross[j]:
                    continue
                pairs.add((i, j) if i < j else (j, i))
    return pairs


def level_frequencies(patterns: Mapping[Pattern, float], alpha: float = 0.5) -> list[list[float]]:
    """P(level) per comparison among non-null observations (weighted), with a pseudocount."""
    sums = [[0.0] * n for n in _N_LEVELS]
    for pattern, weight in patterns.items():
        for c, level in enumerate(pattern):
            sums[c][level] += weight
    out: list[list[float]] = []
    for row in sums:
        counts = [x + alpha for x in row[1:]]
        total = sum(counts)
        out.append([0.0, *(x / total for x in counts)])
    return out


def expectation_maximisation(
    patterns: Mapping[Pattern, int],
    m0: list[list[float]],
    u0: list[list[float]],
    prior0: float,
    *,
    iterations: int = 40,
    tol: float = 1e-6,
    alpha: float = 0.5,
) -> tuple[list[list[float]], list[list[float]], float, int]:
    """Two-class EM over comparison-vector counts; returns (m, u, λ within candidates, iterations)."""
    items = list(patterns.items())
    total = float(sum(count for _, count in items)) or 1.0
    m, u, lam = [list(x) for x in m0], [list(x) for x in u0], prior0
    it = 0
    for it in range(1, iterations + 1):  # noqa: B007 - the count is returned
        # log(m/u) per comparison level; the null level (index 0) carries no evidence.
        log_ratio = [
            [0.0, *(math.log(max(mc, 1e-12)) - math.log(max(uc, 1e-12)) for mc, uc in zip(mr[1:], ur[1:], strict=True))]
            for mr, ur in zip(m, u, strict=True)
        ]
        base = math.log(lam / (1 - lam))
        matched: dict[Pattern, float] = {}
        unmatched: dict[Pattern, float] = {}
        for pattern, count in items:
            z = base + sum(row[level] for row, level in zip(log_ratio, pattern, strict=True))
            post = 1.0 / (1.0 + math.exp(-min(max(z, -700.0), 700.0)))
            matched[pattern] = post * count
            unmatched[pattern] = (1.0 - post) * count
        new_lam = min(max(sum(matched.values()) / total, 1e-9), 1 - 1e-9)
        m = level_frequencies(matched, alpha)
        u = level_frequencies(unmatched, alpha)
        converged = abs(new_lam - lam) < tol
        lam = new_lam
        if converged:
            break
    return m, u, lam, it


TF_COMPARISONS = {"given": F_GIVEN, "family": F_FAMILY}  # comparison → feature position (exact = level 1)


def term_frequency_adjustments(
    feats: Sequence[Sequence[str]], u: list[list[float]], max_values: int = 20_000
) -> dict[str, dict[str, float]]:
    """log2(u_exact / frequency) for values more frequent than the exact level's ``u``."""
    names = [c.name for c in COMPARISONS]
    out: dict[str, dict[str, float]] = {}
    for name, pos in TF_COMPARISONS.items():
        counts = Counter(f[pos] for f in feats if f[pos])
        total = sum(counts.values())
        u_exact = u[names.index(name)][1]
        adj: dict[str, float] = {}
        for value, count in counts.most_common(max_values):
            freq = count / total
            if freq <= u_exact or count < 3:
                break
            adj[value] = round(math.log2(u_exact / freq), 4)
        out[name] = adj
    return out


def train(
    records: Sequence[PatientRecord],
    *,
    max_random_pairs: int = 300_000,
    seed: int = 7,
    iterations: int = 40,
    version: str | None = None,
    cross: Sequence[int] | None = None,
    max_candidate_pairs: int = 2_000_000,
    min_expected_matches: float = 20.0,
) -> MatchModel:
    """Estimate a :class:`MatchModel` from unlabelled records (no training labels needed).

    ``cross``: dataset label per record for linkage (pairs within one dataset are not
    candidates). Above ``max_candidate_pairs`` EM runs on a uniform sample of the candidate
    pairs (λ is a proportion, so the sample estimates it without bias). When EM finds fewer
    than ``min_expected_matches`` matches — a clean register has almost no duplicates — the
    m values cannot be learnt from it and the documented defaults are kept.
    """
    started = time.perf_counter()
    feats = [features(r) for r in records]
    n = len(feats)
    if n < 2:
        raise ValueError("need at least two records to train")
    u_random = level_frequencies(comparison_patterns(feats, random_pairs(n, max_random_pairs, seed)))
    cand = sorted(blocked_pairs(feats, cross=cross))
    n_cand = len(cand)
    if n_cand > max_candidate_pairs:
        cand = random.Random(seed).sample(cand, max_candidate_pairs)
    patterns = comparison_patterns(feats, cand)
    start = default_model()
    m0 = [list(c.m) for c in start.comparisons]
    m_source = "em"
    if not cand:
        m, lam_c, its = m0, 0.0, 0
    else:
        m, _u_blocked, lam_c, its = expectation_maximisation(patterns, m0, u_random, 0.1, iterations=iterations)
    expected = lam_c * n_cand
    if expected < min_expected_matches:
        m, m_source = m0, "default (too few matches for EM)"
        expected = max(expected, 1.0)
    if cross is None:
        total_pairs = n * (n - 1) / 2
    else:
        sizes = defaultdict(int)
        for label in cross:
            sizes[label] += 1
        total_pairs = sum(sizes[a] * sizes[b] for a in sizes for b in sizes if a < b) or 1.0
    prior = max(expected / total_pairs, 1e-12)
    params = [ComparisonParams(comp.name, comp.levels, m[k], u_random[k]) for k, comp in enumerate(COMPARISONS)]
    trained_at = datetime.now(UTC).replace(microsecond=0).isoformat()
    return MatchModel(
        params,
        prior,
        tf_adjustments=term_frequency_adjustments(feats, u_random),
        version=version or f"em-{trained_at}",
        metadata={
            "trained": True,
            "trained_at": trained_at,
            "method": "u: random pairs; m, lambda: EM over blocked candidate pairs",
            "records": n,
            "random_pairs": min(n * (n - 1) // 2, max_random_pairs),
            "candidate_pairs": n_cand,
            "em_pairs": len(cand),
            "em_iterations": its,
            "m_source": m_source,
            "expected_matches": round(expected, 1),
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
