"""Fellegi-Sunter model parameters: m/u per comparison level, match weights, JSON persistence.

* ``m`` = P(level | records are the same person), ``u`` = P(level | different people).
* Match weight of a level = log2(m/u); the "null" level (missing data) has weight 0.
* ``prior`` = λ, the probability that two random records match; its weight log2(λ/(1-λ))
  is added to the sum of level weights, giving the posterior log-odds of a match.
* ``tf_adjustments`` (term frequencies, as in Splink): an exact match on a common name is
  weaker evidence than on a rare one. For values more frequent than the level's average
  (``u`` of the exact level) the exact-match weight becomes log2(m / frequency), i.e. the
  stored adjustment log2(u / frequency) < 0 is added. Rare names are never up-weighted, so
  a typo-made "unique" name cannot manufacture certainty.

Models are versioned JSON (never pickle): ``format`` names the schema, ``version`` names the
trained model, ``metadata`` carries training provenance (when, on what, how many pairs).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.identity.comparisons import COMPARISONS

MODEL_FORMAT = "clinstream.mpi.model/1"
_FLOOR = 1e-9  # keeps log2 finite when a level never occurs in training data


@dataclass(slots=True)
class ComparisonParams:
    name: str
    levels: tuple[str, ...]
    m: list[float]  # index 0 (null) is unused
    u: list[float]

    def weights(self) -> list[float]:
        out = [0.0]
        for m, u in zip(self.m[1:], self.u[1:], strict=True):
            out.append(math.log2(max(m, _FLOOR) / max(u, _FLOOR)))
        return out


@dataclass(slots=True)
class MatchModel:
    comparisons: list[ComparisonParams]
    prior: float
    version: str = "untrained"
    metadata: dict[str, Any] = field(default_factory=dict)
    tf_adjustments: dict[str, dict[str, float]] = field(default_factory=dict)
    _table: list[list[float]] | None = field(default=None, repr=False, compare=False)

    def weight_table(self) -> list[list[float]]:
        """Per-comparison list of level weights, indexed by level (cached: hot path)."""
        if self._table is None:
            self._table = [c.weights() for c in self.comparisons]
        return self._table

    def invalidate(self) -> None:
        self._table = None

    @property
    def prior_weight(self) -> float:
        p = min(max(self.prior, _FLOOR), 1 - 1e-12)
        return math.log2(p / (1 - p))

    @staticmethod
    def probability(match_weight: float) -> float:
        if match_weight > 60:
            return 1.0
        if match_weight < -60:
            return 0.0
        odds = 2.0**match_weight
        return odds / (1.0 + odds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MODEL_FORMAT,
            "version": self.version,
            "prior": self.prior,
            "metadata": self.metadata,
            "tf_adjustments": self.tf_adjustments,
            "comparisons": [
                {
                    "name": c.name,
                    "levels": [{"label": label, "m": c.m[i], "u": c.u[i]} for i, label in enumerate(c.levels) if i > 0],
                }
                for c in self.comparisons
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MatchModel:
        if data.get("format") != MODEL_FORMAT:
            raise ValueError(f"unsupported model format {data.get('format')!r}; expected {MODEL_FORMAT}")
        by_name = {c["name"]: c for c in data["comparisons"]}
        params: list[ComparisonParams] = []
        for comp in COMPARISONS:
            stored = by_name.get(comp.name)
            if stored is None:
                raise ValueError(f"model lacks comparison {comp.name!r}")
            labels = tuple(["null", *[lv["label"] for lv in stored["levels"]]])
            if labels != comp.levels:
                raise ValueError(f"comparison {comp.name!r} levels {labels} do not match code {comp.levels}")
            params.append(
                ComparisonParams(
                    comp.name,
                    comp.levels,
                    [0.0, *[float(lv["m"]) for lv in stored["levels"]]],
                    [0.0, *[float(lv["u"]) for lv in stored["levels"]]],
                )
            )
        meta = dict(data.get("metadata") or {})
        tf = {
            str(name): {str(v): float(w) for v, w in values.items()}
            for name, values in (data.get("tf_adjustments") or {}).items()
        }
        unknown = set(tf) - {c.name for c in COMPARISONS}
        if unknown:
            raise ValueError(f"term-frequency adjustments for unknown comparisons {sorted(unknown)}")
        return cls(params, float(data["prior"]), str(data.get("version", "")), meta, tf)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")

    def describe(self) -> list[dict[str, Any]]:
        """Human-readable weights (for CLI output and review UIs)."""
        table = self.weight_table()
        return [
            {
                "comparison": c.name,
                "level": c.levels[i],
                "m": c.m[i],
                "u": c.u[i],
                "weight": round(table[k][i], 3),
            }
            for k, c in enumerate(self.comparisons)
            for i in range(1, len(c.levels))
        ]


def load_model(path: str | Path) -> MatchModel:
    return MatchModel.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


# Prior guesses (m, u) per level, best level first, "else" last. They are the EM starting
# point and a usable untrained model: m from typical registration error rates, u from
# typical value frequencies in a population register.
_DEFAULT_MU: dict[str, list[tuple[float, float]]] = {
    "given": [
        (0.86, 0.004),
        (0.02, 0.001),
        (0.04, 0.004),
        (0.01, 0.0005),
        (0.02, 0.01),
        (0.02, 0.04),
        (0.03, 0.9405),
    ],
    "family": [(0.88, 0.002), (0.05, 0.003), (0.01, 0.0003), (0.02, 0.008), (0.02, 0.03), (0.02, 0.9567)],
    "birth_date": [
        (0.88, 0.00004),
        (0.01, 0.00001),
        (0.05, 0.0008),
        (0.02, 0.003),
        (0.02, 0.012),
        (0.02, 0.98415),
    ],
    "sex": [(0.97, 0.5), (0.03, 0.5)],
    "house_number": [(0.85, 0.02), (0.15, 0.98)],
    "street": [(0.8, 0.001), (0.08, 0.002), (0.05, 0.02), (0.07, 0.977)],
    "city": [(0.85, 0.02), (0.05, 0.005), (0.1, 0.975)],
    "postcode": [(0.88, 0.003), (0.05, 0.02), (0.02, 0.05), (0.05, 0.927)],
    "phone": [(0.8, 0.00001), (0.05, 0.00001), (0.05, 0.0001), (0.1, 0.99998)],
    "ssn": [(0.9, 0.000001), (0.04, 0.00002), (0.01, 0.0004), (0.02, 0.0001), (0.03, 0.999495)],
}


def default_model(prior: float = 1e-6) -> MatchModel:
    params = []
    for comp in COMPARISONS:
        mu = _DEFAULT_MU[comp.name]
        if len(mu) != len(comp.levels) - 1:
            raise AssertionError(f"default m/u for {comp.name} does not match its levels")
        params.append(ComparisonParams(comp.name, comp.levels, [0.0, *[m for m, _ in mu]], [0.0, *[u for _, u in mu]]))
    return MatchModel(params, prior, version="default-1", metadata={"trained": False})
