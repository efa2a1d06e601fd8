"""Fellegi-Sunter comparisons: each field pair maps to a discrete *level*.

A record is reduced once to a compact feature vector (:func:`features`, a JSON-serialisable
list of strings) so that the hot path compares pre-normalised strings only. Every comparison
function takes two feature vectors and returns a level index into its ``levels`` tuple:

* level 0 is always ``"null"`` — one side is missing; the model gives it weight 0 (no
  evidence), which is how missing data must be treated in Fellegi-Sunter;
* the last level is always ``"else"`` (disagreement);
* levels in between are checked in order and the first that holds wins, so put the most
  specific evidence first.

String similarity and phonetic codes come from rapidfuzz and jellyfish (C implementations);
nothing here hand-rolls a metric.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import jellyfish
from rapidfuzz import fuzz
from rapidfuzz.distance import DamerauLevenshtein, JaroWinkler, Levenshtein

from streams.identity import normalize
from streams.identity.record import PatientRecord

Features = Sequence[str]

# Feature vector layout (positions are part of the stored index format: append, never reorder).
F_REF = 0  # "source|record_id"
F_GIVEN = 1
F_FAMILY = 2
F_GIVEN_CANON = 3  # nickname-resolved given name
F_GIVEN_PHON = 4  # metaphone
F_FAMILY_PHON = 5
F_DOB = 6  # YYYYMMDD
F_SEX = 7
F_HOUSE = 8
F_STREET = 9
F_CITY = 10
F_POSTCODE = 11
F_PHONE = 12
F_SSN = 13
F_SSN4 = 14
F_GIVEN_SDX = 15  # soundex, for blocking
F_FAMILY_SDX = 16
F_IDENTS = 17  # the record's identifier keys ("system|value"), newline-separated
N_FEATURES = 18


# Names repeat heavily across a population, so phonetic codes are memoised. An entry costs about
# 200 bytes with its key, and the worker never restarts to empty these: 200,000 entries per cache
# (the earlier bound) is 40 MB each once a large register has passed through. The common names of
# a population fit in 16,384; the rest are a microsecond each to recompute.
_NAME_MEMO: Final = 16_384


@lru_cache(maxsize=_NAME_MEMO)
def _phon(value: str) -> str:
    return jellyfish.metaphone(value) if value else ""


@lru_cache(maxsize=_NAME_MEMO)
def _sdx(value: str) -> str:
    return jellyfish.soundex(value) if value else ""


@lru_cache(maxsize=_NAME_MEMO)
def _name(value: str) -> str:
    return normalize.name(value)


@lru_cache(maxsize=_NAME_MEMO)
def _city(value: str) -> str:
    return normalize.text(value)


def features(record: PatientRecord) -> list[str]:
    """Normalise a record into the feature vector used by comparisons and blocking."""
    given = _name(record.given)
    family = _name(record.family)
    line = normalize.text(record.address_line)
    house, street = normalize.split_address_line(line)
    line2 = normalize.text(record.address_line2)
    if line2:
        street = f"{street} {line2}".strip()
    ssn = normalize.ssn(record.ssn)
    return [
        f"{record.source}|{record.record_id}",
        given,
        family,
        normalize.canonical_given(given),
        _phon(given),
        _phon(family),
        normalize.birth_date(record.birth_date),
        normalize.sex(record.sex),
        house,
        street,
        _city(record.city),
        normalize.postcode(record.postal_code),
        normalize.phone(record.phone),
        ssn,
        record.effective_ssn_last4,
        _sdx(given),
        _sdx(family),
        "\n".join(ident.key() for ident in record.identifiers),
    ]


@dataclass(frozen=True, slots=True)
class Comparison:
    name: str
    levels: tuple[str, ...]
    compare: Callable[[Features, Features], int]


def compare_given(a: Features, b: Features) -> int:
    x, y = a[F_GIVEN], b[F_GIVEN]
    if not x or not y:
        return 0
    if x == y:
        return 1
    if a[F_GIVEN_CANON] == b[F_GIVEN_CANON]:
        return 2
    jw = JaroWinkler.similarity(x, y)
    if jw >= 0.92:
        return 3
    if b[F_FAMILY] and JaroWinkler.similarity(x, b[F_FAMILY]) >= 0.92:
        return 4  # given/family swapped at registration
    if a[F_GIVEN_PHON] == b[F_GIVEN_PHON]:
        return 5
    if jw >= 0.80:
        return 6
    return 7


GIVEN = Comparison(
    "given",
    ("null", "exact", "nickname", "jw>=0.92", "swapped", "phonetic", "jw>=0.80", "else"),
    compare_given,
)


def compare_family(a: Features, b: Features) -> int:
    x, y = a[F_FAMILY], b[F_FAMILY]
    if not x or not y:
        return 0
    if x == y:
        return 1
    jw = JaroWinkler.similarity(x, y)
    if jw >= 0.92:
        return 2
    if b[F_GIVEN] and JaroWinkler.similarity(x, b[F_GIVEN]) >= 0.92:
        return 3
    if a[F_FAMILY_PHON] == b[F_FAMILY_PHON]:
        return 4
    if jw >= 0.80:
        return 5
    return 6


FAMILY = Comparison("family", ("null", "exact", "jw>=0.92", "swapped", "phonetic", "jw>=0.80", "else"), compare_family)


def compare_dob(a: Features, b: Features) -> int:
    x, y = a[F_DOB], b[F_DOB]
    if not x or not y:
        return 0
    if x.endswith("00") or y.endswith("00"):
        # A partial date (unknown day or month) can only ever agree on the year.
        return 5 if x[:4] == y[:4] else 6
    if x == y:
        return 1
    if x[:4] == y[:4] and x[4:6] == y[6:8] and x[6:8] == y[4:6]:
        return 2  # day and month transposed (US vs. European entry)
    dist = DamerauLevenshtein.distance(x, y, score_cutoff=2)
    if dist == 1:
        return 3
    if dist == 2:
        return 4
    if x[:4] == y[:4]:
        return 5
    return 6


DOB = Comparison(
    "birth_date", ("null", "exact", "day-month-swap", "1-edit", "2-edit", "year-only", "else"), compare_dob
)


def compare_sex(a: Features, b: Features) -> int:
    x, y = a[F_SEX], b[F_SEX]
    if not x or not y:
        return 0
    return 1 if x == y else 2


SEX = Comparison("sex", ("null", "exact", "else"), compare_sex)


def compare_house(a: Features, b: Features) -> int:
    x, y = a[F_HOUSE], b[F_HOUSE]
    if not x or not y:
        return 0
    return 1 if x == y else 2


HOUSE = Comparison("house_number", ("null", "exact", "else"), compare_house)


def compare_street(a: Features, b: Features) -> int:
    x, y = a[F_STREET], b[F_STREET]
    if not x or not y:
        return 0
    if x == y:
        return 1
    # token_set_ratio tolerates a missing second line / building name on one side.
    sim = fuzz.token_set_ratio(x, y, score_cutoff=70)
    if sim >= 90:
        return 2
    if sim >= 70:
        return 3
    return 4


STREET = Comparison("street", ("null", "exact", "tokens>=90", "tokens>=70", "else"), compare_street)


def compare_city(a: Features, b: Features) -> int:
    x, y = a[F_CITY], b[F_CITY]
    if not x or not y:
        return 0
    if x == y:
        return 1
    if JaroWinkler.similarity(x, y) >= 0.90:
        return 2
    return 3


CITY = Comparison("city", ("null", "exact", "jw>=0.90", "else"), compare_city)


def compare_postcode(a: Features, b: Features) -> int:
    x, y = a[F_POSTCODE], b[F_POSTCODE]
    if not x or not y:
        return 0
    if x == y:
        return 1
    if DamerauLevenshtein.distance(x, y, score_cutoff=1) == 1:
        return 2
    if x[:3] == y[:3]:
        return 3
    return 4


POSTCODE = Comparison("postcode", ("null", "exact", "1-edit", "prefix3", "else"), compare_postcode)


def compare_phone(a: Features, b: Features) -> int:
    x, y = a[F_PHONE], b[F_PHONE]
    if not x or not y:
        return 0
    if x == y:
        return 1
    if x[-7:] == y[-7:]:
        return 2  # same local number, area code missing or changed
    if Levenshtein.distance(x, y, score_cutoff=1) == 1:
        return 3
    return 4


PHONE = Comparison("phone", ("null", "exact", "last7", "1-edit", "else"), compare_phone)


def compare_ssn(a: Features, b: Features) -> int:
    x, y = a[F_SSN], b[F_SSN]
    if x and y:
        if x == y:
            return 1
        dist = DamerauLevenshtein.distance(x, y, score_cutoff=2)
        if dist == 1:
            return 2
        if dist == 2:
            return 3
        return 5
    x4, y4 = a[F_SSN4], b[F_SSN4]
    if not x4 or not y4:
        return 0
    return 4 if x4 == y4 else 5


SSN = Comparison("ssn", ("null", "exact", "1-edit", "2-edit", "last4", "else"), compare_ssn)

COMPARISONS: tuple[Comparison, ...] = (GIVEN, FAMILY, DOB, SEX, HOUSE, STREET, CITY, POSTCODE, PHONE, SSN)
_FUNCS = tuple(c.compare for c in COMPARISONS)


def comparison_vector(a: Features, b: Features) -> tuple[int, ...]:
    """Levels of every comparison for one pair (the gamma vector of Fellegi-Sunter)."""
    return tuple(f(a, b) for f in _FUNCS)


def pair_weight(a: Features, b: Features, weights: Sequence[Sequence[float]]) -> float:
    """Sum of per-comparison match weights (log2 m/u) for one pair; the hot path of scoring."""
    total = 0.0
    for f, w in zip(_FUNCS, weights, strict=True):
        total += w[f(a, b)]
    return total
