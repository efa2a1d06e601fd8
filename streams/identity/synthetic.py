"""Seeded synthetic patients at scale, plus realistic registration errors.

Faker is slow per record (~50 µs), so it is used once to build value pools (names with
their US frequency weights, streets, cities, ZIP codes); a million patients are then sampled
from the pools with numpy. Faker is a benchmark-only dependency, imported lazily.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import date, timedelta

import numpy as np

from streams.identity.normalize import NICKNAMES
from streams.identity.record import Identifier, PatientRecord

SOURCES = ("ehr-main", "ehr-clinic", "lab", "portal", "billing")
_EPOCH = date(1920, 1, 1)
_DAYS = (date(2020, 12, 31) - _EPOCH).days


@dataclass(frozen=True, slots=True)
class Pools:
    given_f: tuple[str, ...]
    given_f_p: np.ndarray
    given_m: tuple[str, ...]
    given_m_p: np.ndarray
    family: tuple[str, ...]
    family_p: np.ndarray
    streets: tuple[str, ...]
    places: tuple[tuple[str, str, str], ...]  # (city, state, zip)


def _weights(values: dict[str, float]) -> tuple[tuple[str, ...], np.ndarray]:
    names = tuple(values)
    p = np.asarray([values[n] for n in names], dtype=float)
    return names, p / p.sum()


def build_pools(seed: int = 42, n_streets: int = 6000, n_places: int = 30000) -> Pools:
    try:
        from faker import Faker
        from faker.providers.person.en_US import Provider as PersonProvider
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("the synthetic benchmark needs Faker: pip install faker") from exc
    fake = Faker("en_US")
    fake.seed_instance(seed)
    gf, gfp = _weights(dict(PersonProvider.first_names_female))
    gm, gmp = _weights(dict(PersonProvider.first_names_male))
    fam, famp = _weights(dict(PersonProvider.last_names))
    streets = tuple(sorted({fake.street_name() for _ in range(n_streets)}))
    places = tuple((fake.city(), fake.state_abbr(), fake.zipcode()) for _ in range(n_places))
    return Pools(gf, gfp, gm, gmp, fam, famp, streets, places)


def synthetic_patients(n: int, seed: int = 1, pools: Pools | None = None, prefix: str = "p") -> list[PatientRecord]:
    """``n`` distinct synthetic people, each with an MRN from one of a few source systems."""
    pools = pools or build_pools()
    rng = np.random.default_rng(seed)
    sexes = rng.random(n) < 0.5
    gf = rng.choice(len(pools.given_f), size=n, p=pools.given_f_p)
    gm = rng.choice(len(pools.given_m), size=n, p=pools.given_m_p)
    fam = rng.choice(len(pools.family), size=n, p=pools.family_p)
    days = rng.integers(0, _DAYS, size=n)
    street = rng.integers(0, len(pools.streets), size=n)
    house = rng.integers(1, 9999, size=n)
    place = rng.integers(0, len(pools.places), size=n)
    phone = rng.integers(2_000_000_000, 9_999_999_999, size=n)
    ssn = rng.integers(100_000_000, 899_999_999, size=n)
    has_phone = rng.random(n) < 0.8
    has_ssn = rng.random(n) < 0.6
    source = rng.integers(0, len(SOURCES), size=n)
    out: list[PatientRecord] = []
    for i in range(n):
        female = bool(sexes[i])
        given = pools.given_f[gf[i]] if female else pools.given_m[gm[i]]
        city, state, zipcode = pools.places[place[i]]
        src = SOURCES[source[i]]
        rid = f"{prefix}{i}"
        out.append(
            PatientRecord(
                record_id=rid,
                source=src,
                identifiers=(Identifier(f"urn:clinstream:mrn:{src}", rid, "MR"),),
                family=pools.family[fam[i]],
                given=given,
                birth_date=(_EPOCH + timedelta(days=int(days[i]))).isoformat(),
                sex="female" if female else "male",
                address_line=f"{house[i]} {pools.streets[street[i]]}",
                city=city,
                state=state,
                postal_code=zipcode,
                phone=str(phone[i]) if has_phone[i] else "",
                ssn=str(ssn[i]) if has_ssn[i] else "",
            )
        )
    return out


_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_REVERSE_NICK: dict[str, str] = {}
for _nick, _canon in NICKNAMES.items():
    _REVERSE_NICK.setdefault(_canon, _nick)


def typo(value: str, rng: random.Random) -> str:
    """One keyboard-style error: substitution, deletion, insertion or adjacent transposition."""
    if len(value) < 2:
        return value
    i = rng.randrange(len(value) - 1)
    kind = rng.randrange(4)
    alphabet = "0123456789" if value.isdigit() else _LETTERS
    if kind == 0:
        return value[:i] + rng.choice(alphabet) + value[i + 1 :]
    if kind == 1:
        return value[:i] + value[i + 1 :]
    if kind == 2:
        return value[:i] + rng.choice(alphabet) + value[i:]
    return value[:i] + value[i + 1] + value[i] + value[i + 2 :]


def corrupt(record: PatientRecord, rng: random.Random, errors: int, record_id: str, source: str) -> PatientRecord:
    """The same person as registered by another system, with ``errors`` data-entry errors."""
    r = replace(record, record_id=record_id, source=source, identifiers=())
    fields = ["given", "family", "birth_date", "address_line", "postal_code", "phone", "ssn", "city", "nick"]
    for field in rng.sample(fields, k=min(errors, len(fields))):
        if field == "nick":
            nick = _REVERSE_NICK.get(r.given.lower())
            r = replace(r, given=nick or typo(r.given, rng))
        elif field == "birth_date" and r.birth_date:
            y, m, d = r.birth_date.split("-")
            if rng.random() < 0.3 and int(d) <= 12:
                r = replace(r, birth_date=f"{y}-{d}-{m}")
            else:
                r = replace(r, birth_date=f"{y}-{m}-{typo(d, rng).zfill(2)[:2]}")
        elif field in ("phone", "ssn") and rng.random() < 0.5:
            r = replace(r, **{field: ""})  # simply not captured by this system
        else:
            r = replace(r, **{field: typo(getattr(r, field), rng)})
    return r
