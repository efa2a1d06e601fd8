"""Blocking keys: which stored entities a new record is compared with.

Comparing a record with every patient is O(n); instead each record emits several *blocking
keys* and is compared only with entities sharing at least one. The keys are chosen so that
a single typo (or even two, in different fields) does not hide a true match — every
field that can be mistyped is absent from at least one key:

========  =====================================================  =======================
prefix    key                                                    survives an error in
========  =====================================================  =======================
``s``     full SSN                                               name, DOB, address
``l4``    SSN last 4 + birth year                                name, address, SSN head
``d``     DOB + first letter of given name                       family name, address
``d``     DOB + first letter of family name                      given name, address
``n``     Soundex(given) & Soundex(family) (unordered) + year    DOB day/month, address,
                                                                 given/family swap
``p``     postcode + Soundex(family)                             DOB, given name
``p``     postcode + Soundex(given)                              DOB, family name (marriage)
``ph``    phone                                                  everything but phone
``a``     postcode + house number + street initial               names and DOB
========  =====================================================  =======================

The ``d`` and ``p`` keys of given and family name share a namespace so that records with
given and family name swapped at registration still share a block.

Each key is selective enough that blocks stay small at millions of patients, which keeps
candidate generation O(candidates) per lookup, never O(n²) over a batch.
"""

from __future__ import annotations

from streams.identity.comparisons import (
    F_DOB,
    F_FAMILY,
    F_FAMILY_SDX,
    F_GIVEN,
    F_GIVEN_SDX,
    F_HOUSE,
    F_PHONE,
    F_POSTCODE,
    F_SSN,
    F_SSN4,
    F_STREET,
    Features,
)


def blocking_keys(f: Features) -> list[str]:
    keys: list[str] = []
    dob = f[F_DOB]
    year = dob[:4]
    given, family = f[F_GIVEN], f[F_FAMILY]
    gsx, fsx = f[F_GIVEN_SDX], f[F_FAMILY_SDX]
    post = f[F_POSTCODE]
    ssn = f[F_SSN]
    if len(ssn) >= 5:
        keys.append("s:" + ssn)
    if f[F_SSN4] and year:
        keys.append(f"l4:{f[F_SSN4]}{year}")
    # Given and family keys share a namespace so that swapped names still meet.
    if dob:
        if given:
            keys.append(f"d:{dob}{given[0]}")
        if family and (not given or family[0] != given[0]):
            keys.append(f"d:{dob}{family[0]}")
    if gsx and fsx and year:
        lo, hi = (gsx, fsx) if gsx <= fsx else (fsx, gsx)
        keys.append(f"n:{lo}{hi}{year}")
    if post:
        if fsx:
            keys.append(f"p:{post}{fsx}")
        if gsx and gsx != fsx:
            keys.append(f"p:{post}{gsx}")
        if f[F_HOUSE] and f[F_STREET]:
            keys.append(f"a:{post}|{f[F_HOUSE]}{f[F_STREET][0]}")
    if f[F_PHONE]:
        keys.append("ph:" + f[F_PHONE])
    return keys
