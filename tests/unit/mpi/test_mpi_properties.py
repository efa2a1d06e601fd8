"""Property tests: self-links and independence from unrelated records."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.identity.engine import AUTO_LINK, MatchEngine, Thresholds
from streams.identity.model import default_model
from streams.identity.record import PatientRecord

# Existing patients use letters a-m, years 1900-1959 and postcodes 1xxxx-4xxxx; the unrelated
# record uses n-z, 1960-2009 and 5xxxx-9xxxx, so the two never share a blocking key.
OLD_LETTERS = "abcdefghijklm"
NEW_LETTERS = "nopqrstuvwxyz"


def people(letters: str, years: tuple[int, int], postcodes: tuple[int, int]) -> st.SearchStrategy[PatientRecord]:
    name = st.text(alphabet=letters, min_size=2, max_size=10)
    return st.builds(
        PatientRecord,
        record_id=st.uuids().map(str),
        source=st.sampled_from(["ehr", "lab", "portal"]),
        family=name,
        given=name,
        birth_date=st.dates(date(years[0], 1, 1), date(years[1], 12, 31)).map(date.isoformat),
        sex=st.sampled_from(["male", "female", ""]),
        address_line=st.one_of(st.just(""), st.builds(lambda n, s: f"{n} {s} street", st.integers(1, 999), name)),
        city=st.one_of(st.just(""), name),
        postal_code=st.one_of(st.just(""), st.integers(*postcodes).map(str)),
        phone=st.just(""),
    )


OLD = people(OLD_LETTERS, (1900, 1959), (10000, 49999))
NEW = people(NEW_LETTERS, (1960, 2009), (50000, 99999))


def fresh_engine() -> MatchEngine:
    return MatchEngine(default_model(), Thresholds(auto_link=0.99, review=0.5))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OLD)
def test_a_record_always_links_to_itself(record: PatientRecord) -> None:
    eng = fresh_engine()
    euid = eng.add(record).euid
    # Same record again (replay) and the same person sent by another source system.
    assert eng.resolve(record).euid == euid
    copy = replace(record, record_id=record.record_id + "-copy", source="other")
    res = eng.resolve(copy)
    assert res.band == AUTO_LINK and res.euid == euid


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OLD, min_size=1, max_size=8), NEW)
def test_adding_an_unrelated_record_never_changes_existing_links(
    existing: list[PatientRecord], unrelated: PatientRecord
) -> None:
    eng = fresh_engine()
    for r in existing:
        eng.add(r)
    probes = [replace(r, record_id=r.record_id + "-probe", source="probe") for r in existing]
    before = [(res.band, res.euid, res.score) for res in map(eng.resolve, probes)]
    eng.add(unrelated)
    after = [(res.band, res.euid, res.score) for res in map(eng.resolve, probes)]
    assert after == before


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_normalisation_is_idempotent(value: str) -> None:
    from streams.identity import normalize

    for fn in (normalize.name, normalize.text, normalize.postcode, normalize.phone, normalize.ssn):
        once = fn(value)
        assert fn(once) == once


@settings(max_examples=100, deadline=None)
@given(OLD)
def test_self_comparison_never_disagrees(record: PatientRecord) -> None:
    from streams.identity.comparisons import COMPARISONS, comparison_vector, features

    f = features(record)
    for comp, level in zip(COMPARISONS, comparison_vector(f, f), strict=True):
        assert comp.levels[level] in {"null", "exact", "year-only"}, comp.name
