from __future__ import annotations

import json
from dataclasses import replace

import pytest

from streams.identity.engine import AUTO_LINK, NEW, REVIEW, MatchEngine, MemoryStore, Thresholds
from streams.identity.model import default_model
from streams.identity.record import Identifier, PatientRecord


def test_first_record_is_new_with_stable_euid(engine: MatchEngine, alice: PatientRecord) -> None:
    res = engine.add(alice)
    assert res.band == NEW and res.euid and not res.deterministic
    other = MatchEngine(default_model())
    assert other.add(alice).euid == res.euid  # same founding record → same EUID


def test_replay_of_the_same_source_record_is_idempotent(engine: MatchEngine, alice: PatientRecord) -> None:
    euid = engine.add(alice).euid
    again = engine.add(replace(alice, phone="2175559999"))
    assert again.euid == euid and again.deterministic and again.reasons == ("same-source-record",)
    assert len(engine.store.get("e:" + euid)) == 1  # replaced, not appended


class _CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.puts: list[str] = []

    def put(self, key: str, value: object) -> None:
        self.puts.append(key)
        super().put(key, value)


def test_a_record_sent_again_unchanged_writes_nothing(alice: PatientRecord) -> None:
    store = _CountingStore()
    engine = MatchEngine(default_model(), Thresholds(auto_link=0.99, review=0.5), store=store)
    euid = engine.add(alice).euid
    assert {k[:2] for k in store.puts} >= {"e:", "r:", "i:", "x:", "b:"}
    store.puts.clear()
    assert engine.add(alice).euid == euid
    assert store.puts == []  # the index already holds exactly this
    changed = replace(alice, phone="2175559999")
    assert engine.add(changed).euid == euid
    # the entity's demographics and the new phone's block; the record's EUID and the rest are the same
    assert store.puts == ["e:" + euid, "b:ph:2175559999"]
    (member,) = store.get("e:" + euid)
    assert "2175559999" in member
    assert engine.add(alice).euid == euid and len(store.get("e:" + euid)) == 1


def test_deterministic_link_on_assigning_authority_identifier(engine: MatchEngine, alice: PatientRecord) -> None:
    euid = engine.add(alice).euid
    # Same MRN from the same authority, different record id and wildly different demographics.
    moved = PatientRecord(
        "A1-v2", "ehr", identifiers=alice.identifiers, family="Jones", given="Alice", birth_date="1980-04-12"
    )
    res = engine.resolve(moved)
    assert res.band == AUTO_LINK and res.deterministic and res.euid == euid
    assert res.reasons == ("identifier",)
    assert res.best_candidate is not None and res.best_candidate.record_ref == "ehr|A1"
    # Same MRN, a different person's demographics: still linked, but flagged.
    reused = PatientRecord(
        "A1-v3",
        "ehr",
        identifiers=alice.identifiers,
        family="Okafor",
        given="Chidi",
        birth_date="1944-11-30",
        sex="male",
        postal_code="10001",
    )
    res = engine.resolve(reused)
    assert res.band == AUTO_LINK and res.euid == euid
    assert res.reasons == ("identifier", "identifier-demographics-disagree")


def test_same_value_under_another_authority_is_not_a_deterministic_link(
    engine: MatchEngine, alice: PatientRecord
) -> None:
    engine.add(alice)
    stranger = PatientRecord(
        "Z9",
        "lab",
        identifiers=(Identifier("urn:oid:9.9.9.lab", "MRN001", "MR"),),
        family="Zhang",
        given="Wei",
        birth_date="1955-01-01",
    )
    res = engine.resolve(stranger)
    assert res.band == NEW and not res.deterministic


def test_identifier_conflict_goes_to_review(engine: MatchEngine, alice: PatientRecord) -> None:
    a = engine.add(alice).euid
    bob = PatientRecord(
        "B1",
        "lab",
        identifiers=(Identifier("urn:oid:lab", "L-1", "MR"),),
        family="Brown",
        given="Bob",
        birth_date="1970-01-01",
    )
    b = engine.add(bob).euid
    both = PatientRecord("C1", "hie", identifiers=(*alice.identifiers, *bob.identifiers))
    res = engine.resolve(both)
    assert res.band == REVIEW and res.deterministic and "identifier-conflict" in res.reasons
    assert {a, b} <= set(res.reasons)


def test_strong_identifier_links_when_demographics_agree(engine: MatchEngine, alice: PatientRecord) -> None:
    euid = engine.add(alice).euid
    other_source = PatientRecord(
        "X", "billing", family="Smith", given="Alicia", birth_date="1980-04-12", ssn="123456780"
    )
    res = engine.resolve(other_source)
    assert res.band == AUTO_LINK and res.deterministic and res.euid == euid
    assert res.reasons == ("strong-identifier:ssn",)


def test_strong_identifier_contradicted_by_demographics_goes_to_review(
    engine: MatchEngine, alice: PatientRecord
) -> None:
    engine.add(alice)
    mistyped = PatientRecord(
        "Y",
        "billing",
        family="Okafor",
        given="Chidi",
        birth_date="1944-11-30",
        sex="male",
        postal_code="10001",
        ssn="123456780",
    )
    res = engine.resolve(mistyped)
    assert res.band == REVIEW and not res.deterministic
    assert "strong-identifier-contradicted:ssn" in res.reasons


def test_probabilistic_auto_link_with_typos(engine: MatchEngine, alice: PatientRecord) -> None:
    euid = engine.add(alice).euid
    typo = PatientRecord(
        "P7",
        "portal",
        family="Smyth",
        given="Alice",
        birth_date="1980-04-21",
        sex="F",
        address_line="12 High St",
        city="Springfield",
        postal_code="62704",
        phone="217 555 0134",
    )
    res = engine.add(typo)
    assert res.band == AUTO_LINK and not res.deterministic and res.euid == euid
    assert res.score >= 0.99 and res.best_candidate is not None
    assert res.best_candidate.record_ref == "ehr|A1"
    assert any(r.startswith("phone:exact") for r in res.reasons)
    assert len(engine.store.get("e:" + euid)) == 2


def test_review_band_between_thresholds(alice: PatientRecord) -> None:
    eng = MatchEngine(default_model(), Thresholds(auto_link=0.999999, review=0.5))
    eng.add(alice)
    # Name and DOB agree, address and phone unknown: probable but not certain.
    weak = PatientRecord("W", "clinic", family="Smith", given="Alice", birth_date="1980-04-12")
    res = eng.resolve(weak)
    assert res.band == REVIEW and res.euid is None
    assert 0.5 <= res.score < 0.999999
    added = eng.add(weak)
    assert added.band == REVIEW and added.euid not in (None, res.best_candidate.euid)  # type: ignore[union-attr]


def test_unrelated_record_is_new(engine: MatchEngine, alice: PatientRecord) -> None:
    engine.add(alice)
    res = engine.resolve(
        PatientRecord(
            "Q",
            "ehr",
            family="Smith",
            given="Robert",
            birth_date="1931-07-01",
            sex="male",
            postal_code="62704",
        )
    )
    assert res.band == NEW and res.euid is None



def test_blocking_keys_handed_in_give_what_the_engine_computes(alice: PatientRecord) -> None:
    """add() computes a record's blocking keys once for the lookup and the index writes; the
    keyword is only a shortcut: the same candidates and the same index as without it."""
    from streams.identity.blocking import blocking_keys
    from streams.identity.comparisons import features

    typo = replace(alice, record_id="A2", source="portal", identifiers=(), family="Smyth")
    feats = features(typo)
    keys = blocking_keys(feats)
    with_keys, without = MatchEngine(default_model()), MatchEngine(default_model())
    for eng in (with_keys, without):
        eng.add(alice)
    assert with_keys.candidate_euids(feats, keys) == without.candidate_euids(feats) != set()
    assert with_keys.score_candidates(feats, keys) == without.score_candidates(feats)
    with_keys.index_features(typo, feats, "E2", keys)
    without.index_features(typo, feats, "E2")
    assert dict(with_keys.store) == dict(without.store)  # type: ignore[call-overload]
    assert feats == features(typo)  # interning works on a copy: the caller's list is untouched


def test_scorers_pair_each_comparison_with_the_query_weights(alice: PatientRecord) -> None:
    """Scoring runs prebuilt (comparison, weights) pairs; the sums are the same, to the bit, as
    pair_weight's comparison-by-comparison walk over the query's weight table."""
    from streams.identity.comparisons import _FUNCS, features

    eng = MatchEngine(default_model())
    eng.add(alice)
    typo = features(replace(alice, record_id="A2", source="portal", identifiers=(), family="Smyth"))
    scorers = eng._scorers(typo)
    assert [f for f, _ in scorers] == list(_FUNCS)
    assert [w for _, w in scorers] == eng._query_table(typo)
    ((euid, ref, weight),) = eng.score_candidates(typo)
    (member,) = eng.store.get("e:" + euid)
    assert ref == "ehr|A1" and weight == eng.pair_weight(typo, member)

def test_index_values_are_json_serialisable(engine: MatchEngine, alice: PatientRecord) -> None:
    engine.add(alice)
    engine.add(replace(alice, record_id="A2", given="Alicia"))
    store = engine.store
    assert isinstance(store, MemoryStore)
    assert json.loads(json.dumps(dict(store))) == dict(store)
    assert all(k[:2] in {"b:", "e:", "i:", "x:", "r:"} for k in store)


def test_full_blocks_are_ignored(alice: PatientRecord) -> None:
    eng = MatchEngine(default_model(), max_block_size=3)
    for i in range(5):
        eng.index_record(replace(alice, record_id=f"A{i}", identifiers=()))
    assert eng.candidate_euids(eng_features(alice)) == set()


def eng_features(record: PatientRecord) -> list[str]:
    from streams.identity.comparisons import features

    return features(record)


def test_thresholds_validation() -> None:
    with pytest.raises(ValueError):
        Thresholds(auto_link=0.5, review=0.9)
    t = Thresholds(0.9, 0.4)
    assert (t.band(0.95), t.band(0.5), t.band(0.1)) == (AUTO_LINK, REVIEW, NEW)


def test_injected_id_factory(alice: PatientRecord) -> None:
    eng = MatchEngine(default_model(), id_factory=lambda r: "E-" + r.record_id)
    assert eng.add(alice).euid == "E-A1"


def test_merge_repoints_identifiers_records_and_blocks(engine: MatchEngine, alice: PatientRecord) -> None:
    a = engine.add(alice).euid
    other = PatientRecord(
        "L5",
        "lab",
        identifiers=(Identifier("urn:oid:lab", "L-5", "MR"),),
        family="Smith",
        given="Alice",
        birth_date="1980-04-12",
        ssn="555443333",
    )
    eng2 = MatchEngine(default_model(), Thresholds(auto_link=0.999999, review=0.5), store=engine.store)
    b = eng2.add(other).euid
    assert a and b and a != b
    assert engine.merge(a, b) == a
    assert engine.current_euid(b) == a
    assert {m[0] for m in engine.members(b)} == {"ehr|A1", "lab|L5"}
    assert engine.store.get("e:" + b) is None
    # Every index now answers with the survivor.
    assert engine.resolve(replace(other, record_id="L5-new")).euid == a  # via identifier L-5
    assert engine.resolve(other).euid == a  # same source record
    for key, value in dict(engine.store).items():
        if key.startswith("b:"):
            assert b not in value
    assert engine.merge(a, b) == a  # idempotent


def test_unmerge_splits_one_record_out(engine: MatchEngine, alice: PatientRecord) -> None:
    a = engine.add(alice).euid
    twin = PatientRecord(
        "P2",
        "portal",
        identifiers=(Identifier("urn:oid:portal", "P-2", "MR"),),
        family="Smith",
        given="Alice",
        birth_date="1980-04-12",
        sex="female",
        address_line="12 High Street",
        postal_code="62704",
        phone="2175550134",
    )
    assert engine.add(twin).euid == a
    new = engine.unmerge(a, "portal|P2")
    assert new != a
    assert [m[0] for m in engine.members(a)] == ["ehr|A1"]
    assert [m[0] for m in engine.members(new)] == ["portal|P2"]
    assert engine.resolve(twin).euid == new
    assert engine.resolve(replace(twin, record_id="P3")).euid == new  # via its identifier
    assert engine.unmerge(new, "portal|P2") == new  # already alone
    with pytest.raises(KeyError):
        engine.unmerge(a, "nope|1")


def test_resolution_to_dict_is_json(engine: MatchEngine, alice: PatientRecord) -> None:
    engine.add(alice)
    res = engine.resolve(replace(alice, record_id="A9", source="hie", identifiers=()))
    data = json.loads(json.dumps(res.to_dict()))
    assert data["band"] == AUTO_LINK and data["best_candidate"]["record_ref"] == "ehr|A1"
    assert "Alice" not in json.dumps(data) and "Smith" not in json.dumps(data)  # no PHI


def test_partial_ssn_is_not_a_strong_identifier(engine: MatchEngine) -> None:
    a = PatientRecord("1", "ehr", family="Nguyen", given="Lan", birth_date="1990-01-01", ssn="6780")
    b = PatientRecord("2", "lab", family="Olsen", given="Per", birth_date="1950-06-06", ssn="6780")
    engine.add(a)
    res = engine.resolve(b)
    assert res.band == NEW and not res.deterministic
