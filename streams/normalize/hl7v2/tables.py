"""v2 code tables → FHIR codes, loaded once from the JSON files beside this module."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, Final

import orjson

_DIR: Final = Path(__file__).with_name("tables")

V2: Final = "http://terminology.hl7.org/CodeSystem/v2-"
V3_ACT_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_ROLE_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
V3_INTERPRETATION: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
V3_MARITAL: Final = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"


@cache
def table(name: str) -> dict[str, Any]:
    """The mapping table ``tables/<name>.json`` (keys are v2 codes; ``_doc`` describes it)."""
    data: dict[str, Any] = orjson.loads((_DIR / f"{name}.json").read_bytes())
    data.pop("_doc", None)
    return data


# The tables already read, by name: a plain dict get is cheaper than calling the @cache wrapper
# (lookup runs ~30 times a message).
_LOADED: Final[dict[str, dict[str, Any]]] = {}


def lookup(name: str, code: str) -> Any:
    """Mapped value for ``code`` in table ``name`` (exact, then upper-case), else None."""
    t = _LOADED.get(name)
    if t is None:
        t = _LOADED[name] = table(name)
    hit = t.get(code)
    if hit is None and code:
        hit = t.get(code.upper())
    return hit


# Bound of the memos over finite vocabularies (coding-system names here, assigning authorities in
# datatypes): a deployment sees a few dozen; past the bound, values are computed, not stored.
MEMO_MAX: Final = 4096

# Coding-system name → system URI ("" for None).  Strings only: nothing a caller could mutate.
_SYSTEMS: Final[dict[str, str]] = {}


def coding_system(name: str) -> str | None:
    """FHIR system URI for a v2 coding-system name (table 0396, CWE-3), None when local/unknown."""
    if not name:
        return None
    hit = _SYSTEMS.get(name)
    if hit is None:
        hit = _coding_system(name) or ""
        if len(_SYSTEMS) < MEMO_MAX:
            _SYSTEMS[name] = hit
    return hit or None


def _coding_system(name: str) -> str | None:
    hit = lookup("0396", name)
    if hit:
        return str(hit)
    upper = name.upper()
    # HL7nnnn / HL7-nnnn name a v2 table; its THO code system is v2-nnnn.
    if upper.startswith("HL7"):
        digits = upper[3:].lstrip("-_")
        if digits.isdigit():
            return f"{V2}{digits.zfill(4)}"
    return None
