from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from pathlib import Path

import pytest

from streams.identity.comparisons import COMPARISONS
from streams.identity.em import expectation_maximisation, level_frequencies, train
from streams.identity.model import MODEL_FORMAT, MatchModel, default_model, load_model
from streams.identity.record import PatientRecord


def test_weights_are_log2_m_over_u_and_null_is_zero() -> None:
    model = default_model()
    for params, weights in zip(model.comparisons, model.weight_table(), strict=True):
        assert weights[0] == 0.0
        for i in range(1, len(params.levels)):
            assert weights[i] == pytest.approx(math.log2(params.m[i] / params.u[i]))
    assert model.prior_weight == pytest.approx(math.log2(1e-6 / (1 - 1e-6)))


def test_probability_is_logistic_in_base_2() -> None:
    assert MatchModel.probability(0.0) == 0.5
    assert MatchModel.probability(math.log2(99)) == pytest.approx(0.99)
    assert MatchModel.probability(1000) == 1.0 and MatchModel.probability(-1000) == 0.0


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = default_model(prior=1e-5)
    model.version = "test-7"
    model.metadata = {"trained": True, "records": 12}
    path = tmp_path / "model.json"
    model.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == MODEL_FORMAT and data["version"] == "test-7"
    loaded = load_model(path)
    assert loaded.version == "test-7" and loaded.metadata == {"trained": True, "records": 12}
    assert loaded.prior == model.prior
    assert loaded.weight_table() == model.weight_table()


def test_load_rejects_foreign_or_mismatched_models(tmp_path: Path) -> None:
    data = default_model().to_dict()
    with pytest.raises(ValueError, match="format"):
        MatchModel.from_dict({**data, "format": "something/2"})
    broken = json.loads(json.dumps(data))
    broken["comparisons"][0]["levels"].pop()
    with pytest.raises(ValueError, match="levels"):
        MatchModel.from_dict(broken)
    missing = {**data, "comparisons": data["comparisons"][1:]}
    with pytest.raises(ValueError, match="lacks"):
        MatchModel.from_dict(missing)


def test_level_frequencies_sum_to_one_excluding_null() -> None:
    patterns = {(1,) * len(COMPARISONS): 3.0, (0,) * len(COMPARISONS): 1.0, (2,) * len(COMPARISONS): 2.0}
    for freqs in level_frequencies(patterns):
        assert freqs[0] == 0.0 and sum(freqs[1:]) == pytest.approx(1.0)


def test_em_separates_a_synthetic_mixture() -> None:
    """Matches mostly agree on level 1, non-matches mostly land on 'else': EM must find it."""
    from collections import Counter

    rng = random.Random(3)
    n_levels = [len(c.levels) for c in COMPARISONS]
    rows = []
    for i in range(4000):
        match = i < 800
        row = []
        for n in n_levels:
            if match:
                row.append(1 if rng.random() < 0.9 else n - 1)
            else:
                row.append(1 if rng.random() < 0.05 else n - 1)
        rows.append(tuple(row))
    patterns = Counter(rows)
    start = default_model()
    m0 = [list(c.m) for c in start.comparisons]
    u0 = [list(c.u) for c in start.comparisons]
    m, u, lam, _ = expectation_maximisation(patterns, m0, u0, 0.5)
    assert lam == pytest.approx(0.2, abs=0.02)
    for c in range(len(COMPARISONS)):
        assert m[c][1] == pytest.approx(0.9, abs=0.04)
        assert u[c][1] == pytest.approx(0.05, abs=0.02)


def _people(n: int, seed: int) -> list[PatientRecord]:
    rng = random.Random(seed)
    given = ["anna", "bert", "carla", "dmitri", "elena", "farid", "greta", "hugo", "iris", "jonas"]
    family = [
        "adler",
        "brandt",
        "castro",
        "dubois",
        "eriksen",
        "fischer",
        "garcia",
        "horvat",
        "ito",
        "jansen",
        "kowalski",
        "larsen",
        "moreau",
        "nakamura",
        "olsen",
        "petrov",
    ]
    out = []
    for i in range(n):
        out.append(
            PatientRecord(
                record_id=str(i),
                source="t",
                given=rng.choice(given),
                family=rng.choice(family),
                birth_date=f"{rng.randint(1930, 2010)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                sex=rng.choice("mf"),
                postal_code=str(rng.randint(10000, 10300)),
                address_line=f"{rng.randint(1, 200)} {rng.choice(family)} street",
            )
        )
    return out


def test_train_learns_useful_weights_without_labels() -> None:
    people = _people(600, 1)
    rng = random.Random(2)
    dups = []
    for p in people[:200]:
        dob = p.birth_date
        dups.append(
            replace(
                p,
                record_id=p.record_id + "d",
                given=p.given if rng.random() < 0.7 else p.given[:-1] + "x",
                birth_date=dob if rng.random() < 0.8 else dob[:-1] + str((int(dob[-1]) + 1) % 10),
            )
        )
    model = train([*people, *dups], max_random_pairs=50_000, version="unit")
    assert model.version == "unit" and model.metadata["trained"] is True
    table = {c.name: w for c, w in zip(model.comparisons, model.weight_table(), strict=True)}
    dob = next(c for c in model.comparisons if c.name == "birth_date")
    assert table["birth_date"][1] > 5 and table["birth_date"][-1] < -1
    assert table["family"][1] > 2
    assert dob.m[1] == pytest.approx(0.8, abs=0.1)
    # λ: about 200 matching pairs out of 800*799/2.
    assert model.prior == pytest.approx(200 / (800 * 799 / 2), rel=0.5)


def test_term_frequency_adjustments_lower_common_names_only() -> None:
    from streams.identity.comparisons import features
    from streams.identity.em import term_frequency_adjustments

    def unique_name(i: int) -> str:
        return "rare" + chr(97 + i % 26) + chr(97 + i // 26)

    recs = [PatientRecord(str(i), "s", given="john" if i % 2 else unique_name(i)) for i in range(200)]
    u = [list(c.u) for c in default_model().comparisons]
    adj = term_frequency_adjustments([features(r) for r in recs], u)
    assert set(adj) == {"given", "family"}
    assert adj["given"]["john"] < 0  # half the population: weak evidence
    assert all(not k.startswith("rare") for k in adj["given"])  # rare names are never boosted


def test_tf_adjustments_round_trip_and_change_scores(tmp_path: Path) -> None:
    from streams.identity.comparisons import features
    from streams.identity.engine import MatchEngine

    model = default_model()
    model.tf_adjustments = {"given": {"john": -4.0}, "family": {}}
    path = tmp_path / "m.json"
    model.save(path)
    loaded = load_model(path)
    assert loaded.tf_adjustments == {"given": {"john": -4.0}, "family": {}}
    plain = MatchEngine(default_model())
    tf = MatchEngine(loaded)
    john = features(PatientRecord("1", "s", given="John", family="Doe", birth_date="1970-01-01"))
    jane = features(PatientRecord("1", "s", given="Jane", family="Doe", birth_date="1970-01-01"))
    assert tf.pair_weight(john, john) == pytest.approx(plain.pair_weight(john, john) - 4.0)
    assert tf.pair_weight(jane, jane) == pytest.approx(plain.pair_weight(jane, jane))
    with pytest.raises(ValueError, match="unknown"):
        MatchModel.from_dict({**loaded.to_dict(), "tf_adjustments": {"shoe_size": {}}})


def test_train_on_a_clean_register_keeps_default_m() -> None:
    model = train(_people(300, 9), max_random_pairs=20_000)
    assert model.metadata["m_source"].startswith("default")
    assert [c.m for c in model.comparisons] == [c.m for c in default_model().comparisons]
    assert 0 < model.prior < 1e-3


def test_train_samples_candidate_pairs_above_the_cap() -> None:
    people = _people(400, 4)
    dups = [replace(p, record_id=p.record_id + "d") for p in people[:150]]
    model = train([*people, *dups], max_random_pairs=20_000, max_candidate_pairs=100)
    assert model.metadata["em_pairs"] == 100 < model.metadata["candidate_pairs"]
    assert model.metadata["m_source"] == "em"
