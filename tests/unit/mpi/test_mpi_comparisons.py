from __future__ import annotations

from dataclasses import replace

import pytest

from streams.identity import comparisons as c
from streams.identity.blocking import blocking_keys
from streams.identity.record import PatientRecord

BASE = PatientRecord(
    record_id="1",
    source="s",
    family="Johnson",
    given="Catherine",
    birth_date="1980-04-12",
    sex="F",
    address_line="12 High Street",
    address_line2="Flat 2",
    city="Springfield",
    postal_code="62704",
    phone="2175550134",
    ssn="123456780",
)


def level(comp: c.Comparison, **changes: str) -> str:
    a = c.features(BASE)
    b = c.features(replace(BASE, **changes))
    return comp.levels[comp.compare(a, b)]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, "exact"),
        ({"given": ""}, "null"),
        ({"given": "Kathryn"}, "nickname"),
        ({"given": "Catherien"}, "jw>=0.92"),
        ({"given": "Johnsen", "family": "Catherine"}, "swapped"),
        ({"given": "Katerina"}, "jw>=0.80"),
        ({"given": "Zoe"}, "else"),
    ],
)
def test_given_levels(changes: dict[str, str], expected: str) -> None:
    assert level(c.GIVEN, **changes) == expected


def test_given_phonetic_level() -> None:
    a = c.features(replace(BASE, given="Philip"))
    b = c.features(replace(BASE, given="Filip"))
    assert c.GIVEN.levels[c.compare_given(a, b)] in {"phonetic", "jw>=0.92", "jw>=0.80"}
    a = c.features(replace(BASE, given="Knight"))
    b = c.features(replace(BASE, given="Nite"))
    assert c.GIVEN.levels[c.compare_given(a, b)] == "phonetic"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, "exact"),
        ({"family": "Jonhson"}, "jw>=0.92"),
        ({"family": "Catherine", "given": "Johnson"}, "swapped"),
        ({"family": "Jonstone"}, "jw>=0.80"),
        ({"family": "Xu"}, "else"),
        ({"family": ""}, "null"),
    ],
)
def test_family_levels(changes: dict[str, str], expected: str) -> None:
    assert level(c.FAMILY, **changes) == expected


@pytest.mark.parametrize(
    ("dob", "expected"),
    [
        ("1980-04-12", "exact"),
        ("1980-12-04", "day-month-swap"),
        ("1980-04-13", "1-edit"),
        ("1980-04-21", "1-edit"),  # adjacent transposition counts as one edit (Damerau)
        ("1981-05-12", "2-edit"),
        ("1980-09-30", "year-only"),
        ("1955-01-01", "else"),
        ("", "null"),
        ("1980", "year-only"),  # partial dates never count as an exact match
        ("1980-04", "year-only"),
        ("1981", "else"),
    ],
)
def test_dob_levels(dob: str, expected: str) -> None:
    assert level(c.DOB, birth_date=dob) == expected


def test_other_levels() -> None:
    assert level(c.SEX, sex="female") == "exact"
    assert level(c.SEX, sex="male") == "else"
    assert level(c.SEX, sex="unknown") == "null"
    assert level(c.HOUSE, address_line="14 High Street") == "else"
    assert level(c.STREET, address_line="12 High Street") == "exact"
    assert level(c.STREET, address_line2="") == "tokens>=90"  # missing second line on one side
    assert level(c.STREET, address_line="12 Hihg Street", address_line2="") == "tokens>=70"
    assert level(c.STREET, address_line="12 Ocean Parade", address_line2="") == "else"
    assert level(c.CITY, city="Springfeild") == "jw>=0.90"
    assert level(c.CITY, city="Boston") == "else"
    assert level(c.POSTCODE, postal_code="62704-1111") == "exact"
    assert level(c.POSTCODE, postal_code="62705") == "1-edit"
    assert level(c.POSTCODE, postal_code="62799") == "prefix3"
    assert level(c.POSTCODE, postal_code="10001") == "else"
    assert level(c.PHONE, phone="555-0134") == "last7"  # local number without area code
    assert level(c.PHONE, phone="0134") == "null"  # too short to be a phone number
    assert level(c.PHONE, phone="312-555-0134") == "last7"
    assert level(c.PHONE, phone="217-555-0135") == "1-edit"
    assert level(c.SSN, ssn="123456780") == "exact"
    assert level(c.SSN, ssn="123456781") == "1-edit"
    assert level(c.SSN, ssn="", ssn_last4="6780") == "last4"
    assert level(c.SSN, ssn="999456001") == "else"
    assert level(c.SSN, ssn="") == "null"


def test_comparisons_are_symmetric_for_core_fields() -> None:
    a = c.features(BASE)
    b = c.features(replace(BASE, given="Kathryn", family="Jonson", birth_date="1980-12-04", postal_code="62705"))
    assert c.comparison_vector(a, b) == c.comparison_vector(b, a)


def test_every_comparison_has_null_first_and_else_last() -> None:
    for comp in c.COMPARISONS:
        assert comp.levels[0] == "null" and comp.levels[-1] == "else"


def test_blocking_keys_survive_single_typos() -> None:
    base = set(blocking_keys(c.features(BASE)))
    for changes in (
        {"given": "Catherinr"},
        {"family": "Jhonson"},
        {"birth_date": "1980-04-13"},
        {"postal_code": "62740"},
        {"ssn": ""},
        {"given": "Johnson", "family": "Catherine"},
    ):
        other = set(blocking_keys(c.features(replace(BASE, **changes))))
        assert base & other, changes


def test_blocking_keys_empty_record() -> None:
    assert blocking_keys(c.features(PatientRecord("1", "s"))) == []


def test_name_memos_stay_bounded_and_evicted_values_recompute_the_same():
    first = (c._phon("Katherine"), c._sdx("Katherine"), c._name("Katherine"), c._city("Springfield"))
    for memo in (c._phon, c._sdx, c._name, c._city):
        for i in range(20_000):  # more distinct values than any memo keeps
            memo(f"Name{i:05d}")
        assert memo.cache_info().currsize <= 16_384
    assert (c._phon("Katherine"), c._sdx("Katherine"), c._name("Katherine"), c._city("Springfield")) == first
