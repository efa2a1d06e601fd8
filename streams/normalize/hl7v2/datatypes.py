"""v2 data types → FHIR data types (plain dicts), per the v2-to-FHIR IG datatype maps.

Every function takes a :class:`Rep` (one repetition, or a component seen as a
composite via ``Rep.part``) or a plain string and returns a dict / str, or None
when there is nothing to map, so callers can drop empty elements cheaply.
Invalid primitive values raise :class:`DataTypeError`; the segment mapper adds
the segment and field and re-raises it as ``Hl7ParseError``.
"""

from __future__ import annotations

import re
from calendar import monthrange
from typing import Any
from urllib.parse import quote

from schemas.hl7v2.parser import Rep
from streams.normalize.hl7v2.tables import V2, V3_INTERPRETATION, coding_system, lookup

__all__ = [
    "LOCAL_SYSTEM_BASE",
    "DataTypeError",
    "address",
    "codeable",
    "contact_point",
    "date",
    "datetime_",
    "ei_identifier",
    "hd_system",
    "human_name",
    "identifier",
    "instant",
    "number",
    "table_coding",
]

# Identifier/coding namespaces with no OID/URI (CX.4.1 "HOSP", CWE-3 "99ZZZ") get a
# system under this base; the IG leaves local namespaces to a site naming-system
# registry, so it's deliberately a urn a deployment can recognise and rewrite.
LOCAL_SYSTEM_BASE = "urn:clinstream:v2:ns:"


class DataTypeError(ValueError):
    """A primitive v2 value that cannot be represented in FHIR."""


# Fraction digits without the dot ("2004062916460000") are a common sender quirk: accepted.
_TS = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.?\d{1,4})?([+-]\d{4})?")


def _split_ts(value: str) -> tuple[str, ...] | None:
    value = value.strip()
    if not value:
        return None
    m = _TS.fullmatch(value)
    if m is None:
        raise DataTypeError(f"invalid timestamp {value!r}")
    year, month, day, hour, minute, second, frac, tz = m.groups()
    if month and not 1 <= int(month) <= 12:
        raise DataTypeError(f"invalid timestamp {value!r}: month {month}")
    if day and not 1 <= int(day) <= monthrange(int(year), int(month))[1]:
        raise DataTypeError(f"invalid timestamp {value!r}: day {day}")
    if hour and (int(hour) > 23 or (minute and int(minute) > 59) or (second and int(second) > 59)):
        raise DataTypeError(f"invalid timestamp {value!r}: time out of range")
    if frac and not second:
        raise DataTypeError(f"invalid timestamp {value!r}: fraction without seconds")
    if tz and (int(tz[1:3]) > 14 or int(tz[3:5]) > 59):
        raise DataTypeError(f"invalid timestamp {value!r}: offset {tz}")
    if frac and not frac.startswith("."):
        frac = "." + frac
    return year, month or "", day or "", hour or "", minute or "", second or "", frac or "", tz or ""


def _fhir_tz(tz: str, default_tz: str) -> str:
    if not tz:
        return default_tz
    return "Z" if tz in ("+0000", "-0000") else f"{tz[:3]}:{tz[3:]}"


def datetime_(value: str, default_tz: str = "Z") -> str | None:
    """DTM/TS → FHIR dateTime, keeping the sender's precision and offset.

    FHIR requires an offset whenever a time is present; a v2 time without one is
    given ``default_tz`` (the source's configured zone, UTC unless set).
    """
    parts = _split_ts(value)
    if parts is None:
        return None
    year, month, day, hour, minute, second, frac, tz = parts
    if not month:
        return year
    if not day:
        return f"{year}-{month}"
    if not hour:
        return f"{year}-{month}-{day}"
    return f"{year}-{month}-{day}T{hour}:{minute or '00'}:{second or '00'}{frac}{_fhir_tz(tz, default_tz)}"


def date(value: str) -> str | None:
    """DT/DTM → FHIR date (time part dropped, precision kept)."""
    parts = _split_ts(value)
    if parts is None:
        return None
    year, month, day = parts[:3]
    return "-".join(p for p in (year, month, day) if p)


def instant(value: str, default_tz: str = "Z") -> str | None:
    """DTM → FHIR instant, or None when the value is less precise than a second."""
    parts = _split_ts(value)
    if parts is None or not parts[5]:
        return None
    return datetime_(value, default_tz)


def instant_padded(value: str, default_tz: str = "Z") -> str | None:
    """DTM → FHIR instant, padding missing month/day/time with their first value."""
    parts = _split_ts(value)
    if parts is None:
        return None
    year, month, day, hour, minute, second, frac, tz = parts
    return (f"{year}-{month or '01'}-{day or '01'}T{hour or '00'}:{minute or '00'}:{second or '00'}{frac}"
            f"{_fhir_tz(tz, default_tz)}")


def number(value: str) -> int | float | None:
    """NM → JSON number."""
    value = value.strip()
    if not value:
        return None
    if value.startswith("+"):
        value = value[1:]
    try:
        if value.lstrip("-").isdigit():
            return int(value)
        result = float(value)
    except ValueError:
        raise DataTypeError(f"invalid number {value!r}") from None
    if result != result or result in (float("inf"), float("-inf")):
        raise DataTypeError(f"invalid number {value!r}")
    return result


def hd_system(hd: Rep) -> str | None:
    """HD (namespace ^ universal id ^ type) → a URI usable as Identifier.system."""
    universal, kind = hd.get(2), hd.get(3).upper()
    if universal:
        if kind in ("ISO", "HL7") or (not kind and universal[:1].isdigit() and "." in universal):
            return f"urn:oid:{universal}"
        if kind == "UUID":
            return f"urn:uuid:{universal}"
        if kind in ("URI", "URL") or universal.startswith(("http://", "https://", "urn:")):
            return universal
    namespace = hd.get(1)
    if namespace:
        return local_system(namespace)
    return None


def local_system(namespace: str) -> str:
    return LOCAL_SYSTEM_BASE + quote(namespace.strip(), safe="")


def _coding(code: str, display: str, system_name: str, oid: str = "") -> dict[str, Any] | None:
    if not code and not display:
        return None
    coding: dict[str, Any] = {}
    system = coding_system(system_name)
    if system is None and oid:
        system = f"urn:oid:{oid}"
    if system is None and system_name and system_name.upper().startswith("99"):
        system = local_system(system_name)  # "99zzz" is the v2 convention for local systems
    if system:
        coding["system"] = system
    if code:
        coding["code"] = code
    if display:
        coding["display"] = display
    return coding


def codeable(rep: Rep) -> dict[str, Any] | None:
    """CE/CNE/CWE → CodeableConcept (identifier+alternate, original text in CWE.9)."""
    if not rep.raw:
        return None
    codings = []
    first = _coding(rep.get(1), rep.get(2), rep.get(3), rep.get(14))
    if first and first.get("code"):
        codings.append(first)
    alt = _coding(rep.get(4), rep.get(5), rep.get(6), rep.get(17))
    if alt and alt.get("code"):
        codings.append(alt)
    text = rep.get(9) or (rep.get(2) if not codings else "")
    if not text and not codings:
        text = rep.get(1) or rep.get(5)
    out: dict[str, Any] = {}
    if codings:
        out["coding"] = codings
    if text:
        out["text"] = text
    return out or None


def table_coding(code: str, table_id: str, display: str = "") -> dict[str, Any] | None:
    """A code from HL7 table ``table_id`` as a Coding in its THO v2 code system."""
    code = code.strip()
    if not code:
        return None
    coding: dict[str, Any] = {"system": f"{V2}{table_id}", "code": code}
    if display:
        coding["display"] = display
    return coding


def interpretation(rep: Rep) -> dict[str, Any] | None:
    """OBX-8 (table 0078) → v3 ObservationInterpretation."""
    code = rep.get(1).strip()
    if not code:
        return None
    display = lookup("0078", code)
    if display is None:
        return codeable(rep)
    return {"coding": [{"system": V3_INTERPRETATION, "code": code, "display": display}]}


def human_name(rep: Rep, *, xcn: bool = False) -> dict[str, Any] | None:
    """XPN (or the name part of XCN, shifted by one component) → HumanName."""
    o = 1 if xcn else 0
    family = rep.part(1 + o).get(1)
    # XPN.15 "called by" is a given name too (as the reference converter and IG XPN map treat it).
    given = [g for g in (rep.get(2 + o), rep.get(3 + o), "" if xcn else rep.get(15)) if g]
    name: dict[str, Any] = {}
    if family:
        name["family"] = family
    if given:
        name["given"] = given
    suffix = [s for s in (rep.get(4 + o), rep.get(6 + o), "" if xcn else rep.get(14)) if s]
    if suffix:
        name["suffix"] = suffix
    prefix = rep.get(5 + o)
    if prefix:
        name["prefix"] = [prefix]
    if not name:
        return None
    use = lookup("0200-use", rep.get(10 if xcn else 7)) if not xcn else None
    if use:
        name["use"] = use
    if not xcn:
        start, end = date(rep.get(12)) if rep.get(12) else None, date(rep.get(13)) if rep.get(13) else None
        if not (start or end) and rep.get(10):
            period = rep.part(10)
            start, end = date(period.get(1)), date(period.get(2))
        if start or end:
            name["period"] = {k: v for k, v in (("start", start), ("end", end)) if v}
    return name


def address(rep: Rep) -> dict[str, Any] | None:
    """XAD → Address (use/type from table 0190)."""
    if not rep.raw:
        return None
    sad = rep.part(1)
    # SAD.1 street, SAD.2 street name, SAD.3 dwelling number, XAD.2 other designation,
    # XAD.19 addressee-style extra line: each a line, in that order.
    lines = [line for line in (sad.get(1), sad.get(2), sad.get(3), rep.get(2), rep.get(19)) if line]
    out: dict[str, Any] = {}
    if lines:
        out["line"] = lines
    for key, comp in (("city", 3), ("state", 4), ("postalCode", 5), ("country", 6), ("district", 9)):
        value = rep.get(comp)
        if value:
            out[key] = value
    kind = lookup("0190", rep.get(7))
    if kind:
        out.update(kind)
    start, end = rep.get(13), rep.get(14)
    if not (start or end) and rep.get(12):
        start, end = rep.get(12, 1), rep.get(12, 2)
    start_d, end_d = date(start) if start else None, date(end) if end else None
    if start_d or end_d:
        out["period"] = {k: v for k, v in (("start", start_d), ("end", end_d)) if v}
    if not out or set(out) <= {"use", "type"}:
        return None
    return out


def contact_point(rep: Rep, default_use: str | None = None) -> dict[str, Any] | None:
    """XTN → ContactPoint (use from 0201, system from 0202)."""
    if not rep.raw:
        return None
    equipment = rep.get(3)
    kind = lookup("0202", equipment) or {}
    value = rep.get(1)
    if equipment in ("Internet", "X.400") or (not value and rep.get(4)):
        value = rep.get(4) or value
    if not value:
        parts = [p for p in (rep.get(5), rep.get(6), rep.get(7)) if p]
        value = " ".join(parts)
        if value and rep.get(8):
            value += f" ext. {rep.get(8)}"
    if not value:
        return None
    out: dict[str, Any] = {"system": kind.get("system", "email" if "@" in value else "phone"), "value": value}
    use = kind.get("use") or lookup("0201", rep.get(2)) or default_use
    if use:
        out["use"] = use
    return out


def identifier(rep: Rep) -> dict[str, Any] | None:
    """CX → Identifier (system from CX.4 assigning authority, type from CX.5/0203)."""
    value = rep.get(1)
    if not value:
        return None
    out: dict[str, Any] = {"value": value}
    system = hd_system(rep.part(4))
    if system is None and rep.get(9):
        system = hd_system(rep.part(9))  # CX.9 assigning jurisdiction
    if system is None and rep.get(10):
        system = hd_system(rep.part(10))  # CX.10 assigning agency
    if system:
        out["system"] = system
    type_code = rep.get(5)
    if type_code:
        out["type"] = {"coding": [_type_coding(type_code)]}
    start = date(rep.get(7)) if rep.get(7) else None
    end = date(rep.get(8)) if rep.get(8) else None
    if start or end:
        out["period"] = {k: v for k, v in (("start", start), ("end", end)) if v}
    namespace = rep.get(4)
    if namespace and not rep.get(4, 2):
        out["assigner"] = {"display": namespace}
    return out


def _type_coding(code: str) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": f"{V2}0203", "code": code}
    display = lookup("0203", code)
    if display:
        coding["display"] = display
    return coding


def typed_identifier(value: str, type_code: str, system: str | None = None) -> dict[str, Any] | None:
    if not value:
        return None
    out: dict[str, Any] = {"value": value, "type": {"coding": [_type_coding(type_code)]}}
    if system:
        out["system"] = system
    return out


def ei_identifier(rep: Rep, type_code: str | None = None) -> dict[str, Any] | None:
    """EI (entity id ^ namespace ^ universal id ^ type) → Identifier."""
    value = rep.get(1)
    if not value:
        return None
    out: dict[str, Any] = {"value": value}
    hd = Rep(rep.raw.split(rep.sep, 1)[1] if rep.sep and rep.sep in rep.raw else "", rep.enc, rep.sep, rep.subsep)
    system = hd_system(hd)
    if system:
        out["system"] = system
    if type_code:
        out["type"] = {"coding": [_type_coding(type_code)]}
    return out


def quantity(value: int | float, unit_rep: Rep | None) -> dict[str, Any]:
    """NM + CWE units → Quantity (UCUM system when the units say so)."""
    out: dict[str, Any] = {"value": value}
    if unit_rep is not None and unit_rep.raw:
        code, text, system_name = unit_rep.get(1), unit_rep.get(2), unit_rep.get(3)
        out["unit"] = text or code
        if code:
            system = coding_system(system_name) if system_name else None
            if system:
                out["system"] = system
                out["code"] = code
            elif not system_name:
                out["unit"] = text or code
    return out


def period(start: str | None, end: str | None) -> dict[str, str] | None:
    if not start and not end:
        return None
    return {k: v for k, v in (("start", start), ("end", end)) if v}
