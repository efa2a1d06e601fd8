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
from typing import Any, Final
from urllib.parse import quote

from schemas.hl7v2.parser import Rep
from streams.normalize.hl7v2.tables import MEMO_MAX, V2, V3_INTERPRETATION, coding_system, lookup

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
LOCAL_SYSTEM_BASE: Final = "urn:clinstream:v2:ns:"


class DataTypeError(ValueError):
    """A primitive v2 value that cannot be represented in FHIR."""


# Fraction digits without the dot ("2004062916460000") are a common sender quirk: accepted.
_TS: Final = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.?\d{1,4})?([+-]\d{4})?")


_TS_LENGTHS: Final = frozenset({4, 6, 8, 10, 12, 14})
_MONTHS: Final = frozenset(f"{m:02d}" for m in range(1, 13))
_MONTHS_30: Final = frozenset({"04", "06", "09", "11"})


def _split_ts(value: str) -> tuple[str, ...] | None:
    value = value.strip()
    if not value:
        return None
    # Fast path for the common shapes (YYYY[MM[DD[HH[MM[SS[.S{1,4}]]]]]][+/-ZZZZ], ASCII digits):
    # slicing and two-digit string comparisons instead of the regex and int(); anything unusual
    # or invalid goes the general way (_split_ts_slow), which also produces the error message.
    tz = ""
    body = value
    if len(value) > 5 and value[-5] in "+-":
        tz = value[-5:]
        body = value[:-5]
        if not (tz[1:].isdigit() and tz.isascii()) or tz[1:3] > "14" or tz[3:5] > "59":
            return _split_ts_slow(value)
    frac = ""
    if "." in body:
        dot = body.index(".")
        frac = body[dot:]
        body = body[:dot]
        if not 2 <= len(frac) <= 5 or not frac[1:].isdigit() or len(body) != 14:
            return _split_ts_slow(value)
    n = len(body)
    if n not in _TS_LENGTHS or not body.isdigit() or not body.isascii():
        return _split_ts_slow(value)
    year = body[:4]
    if n == 4:
        return year, "", "", "", "", "", "", tz
    month = body[4:6]
    if month not in _MONTHS:
        return _split_ts_slow(value)
    if n == 6:
        return year, month, "", "", "", "", "", tz
    day = body[6:8]
    if not "01" <= day <= "28":
        if day == "00" or day > "31" or (day == "31" and month in _MONTHS_30):
            return _split_ts_slow(value)
        if month == "02":
            y = int(year)
            if day > "29" or not (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)):
                return _split_ts_slow(value)
    if n == 8:
        return year, month, day, "", "", "", "", tz
    hour = body[8:10]
    minute = body[10:12]
    second = body[12:14]
    if hour > "23" or minute > "59" or second > "59":
        return _split_ts_slow(value)
    return year, month, day, hour, minute, second, frac, tz


def _split_ts_slow(value: str) -> tuple[str, ...] | None:
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


# Offset suffix (±ZZZZ) → FHIR offset, "" where the fast path declines it.  Offsets are a finite
# vocabulary (a few per sending site), so the memo is bounded and holds strings only.
_OFFSETS: Final[dict[str, str]] = {}


def _fast_tz(tz: str) -> str:
    """FHIR offset of the suffix ``tz`` (``+ZZZZ``/``-ZZZZ``), ``""`` to decline (not an offset, out of range)."""
    hit = _OFFSETS.get(tz)
    if hit is None:
        hit = ""
        sign, hh, mm = tz[0], tz[1:3], tz[3:5]
        if (sign == "+" or sign == "-") and hh.isdigit() and mm.isdigit() and tz.isascii() and hh <= "14" \
                and mm <= "59":
            hit = "Z" if hh == "00" and mm == "00" else f"{tz[:3]}:{mm}"
        if len(_OFFSETS) < MEMO_MAX:
            _OFFSETS[tz] = hit
    return hit


def _fast_datetime(value: str, default_tz: str, need_seconds: bool) -> str | None:
    """The common shapes YYYYMMDD and YYYYMMDDHHMM[SS] (with or without ±ZZZZ) formatted by slicing.

    Returns None whenever the value is anything else (other precisions, fractions, blanks,
    day 29-31, invalid or non-ASCII digits): the general path then decides, and raises the errors,
    so this only ever returns what it would have returned.  Ranges are checked on character codes
    (ASCII digits once isdigit/isascii said so): compiled, that reads characters without
    allocating the two-digit slices.
    """
    n = len(value)
    if n == 8:
        if need_seconds or not (value.isdigit() and value.isascii()):
            return None
        month = ord(value[4]) * 10 + ord(value[5]) - 528  # 528 == 11 * ord("0")
        day = ord(value[6]) * 10 + ord(value[7]) - 528
        if not (1 <= month <= 12 and 1 <= day <= 28):
            return None
        return f"{value[:4]}-{value[4:6]}-{value[6:8]}"
    tz = default_tz
    if n > 14:
        n -= 5
        tz = _fast_tz(value[n:])
        if not tz:
            return None
    if n != 14 and (n != 12 or need_seconds):
        return None
    body = value[:n] if n != len(value) else value
    if not (body.isdigit() and body.isascii()):
        return None
    month = ord(body[4]) * 10 + ord(body[5]) - 528
    day = ord(body[6]) * 10 + ord(body[7]) - 528
    hour = ord(body[8]) * 10 + ord(body[9]) - 528
    minute = ord(body[10]) * 10 + ord(body[11]) - 528
    if not (1 <= month <= 12 and 1 <= day <= 28 and hour <= 23 and minute <= 59):
        return None
    if n == 14:
        if ord(body[12]) * 10 + ord(body[13]) - 528 > 59:
            return None
        second = body[12:14]
    else:
        second = "00"
    return f"{body[:4]}-{body[4:6]}-{body[6:8]}T{body[8:10]}:{body[10:12]}:{second}{tz}"


def datetime_(value: str, default_tz: str = "Z") -> str | None:
    """DTM/TS → FHIR dateTime, keeping the sender's precision and offset.

    FHIR requires an offset whenever a time is present; a v2 time without one is
    given ``default_tz`` (the source's configured zone, UTC unless set).
    """
    fast = _fast_datetime(value, default_tz, False)
    if fast is not None:
        return fast
    parts = _split_ts(value)
    if parts is None:
        return None
    return _format_dt(parts, default_tz)


def _format_dt(parts: tuple[str, ...], default_tz: str) -> str:
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
    n = len(value)
    if n == 8:
        fast = _fast_datetime(value, "", False)  # the common YYYYMMDD: a date either way
        if fast is not None:
            return fast
    elif n > 8:
        fast = _fast_datetime(value, "Z", False)  # a valid full date-time: its date part
        if fast is not None:
            return fast[:10]
    parts = _split_ts(value)
    if parts is None:
        return None
    year, month, day = parts[:3]
    if not month:
        return year
    return f"{year}-{month}-{day}" if day else f"{year}-{month}"


def instant(value: str, default_tz: str = "Z") -> str | None:
    """DTM → FHIR instant, or None when the value is less precise than a second."""
    fast = _fast_datetime(value, default_tz, True)
    if fast is not None:
        return fast
    n = len(value)
    if (n == 8 or n == 12 or n == 17) and _fast_datetime(value, default_tz, False) is not None:
        return None  # valid, but a day or minute precision: no instant (as the general path decides)
    parts = _split_ts(value)
    if parts is None or not parts[5]:
        return None
    return _format_dt(parts, default_tz)


def instant_padded(value: str, default_tz: str = "Z") -> str | None:
    """DTM → FHIR instant, padding missing month/day/time with their first value."""
    if len(value) > 8:
        fast = _fast_datetime(value, default_tz, False)  # minutes or seconds: padded, it's the dateTime
        if fast is not None:
            return fast
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
    v = hd.vals()
    return _hd_system(v[0], v[1], v[2])


def _hd_system_raw(raw: str, rep: Rep) -> str | None:
    """``hd_system(rep.part(i))`` given the raw component ``raw`` of ``rep``."""
    if not raw:
        return None
    ss = rep.subsep
    esc = rep.enc.esc
    if ss is None or ss not in raw:
        if esc not in raw:
            return _hd_system(raw, "", "")  # namespace only (the usual "HOSP"): no composite to build
    elif ss == "&" and esc not in raw:
        # The usual full HD ("HOSP&1.2.3&ISO"): by its text, which alone decides the result with the
        # standard "&" and no escapes, instead of a Rep, a split and a tuple key per identifier.
        hit = _HD_RAW_SYSTEMS.get(raw)
        if hit is None:
            v = Rep(raw, rep.enc, ss, None).vals()
            hit = _hd_system(v[0], v[1], v[2]) or ""
            if len(_HD_RAW_SYSTEMS) < MEMO_MAX:
                _HD_RAW_SYSTEMS[raw] = hit
        return hit or None
    v = Rep(raw, rep.enc, ss, None).vals()
    return _hd_system(v[0], v[1], v[2])


# HD (assigning authority) → system URI ("" for None), by namespace alone for the usual
# namespace-only HD and by all three parts otherwise.  Assigning authorities are a finite
# vocabulary (a site's facilities and registries), so the memos are bounded, not keyed by patient
# data; they hold strings only, nothing a caller could mutate.
_NS_SYSTEMS: Final[dict[str, str]] = {}
_HD_SYSTEMS: Final[dict[tuple[str, str, str], str]] = {}
# The same by the raw "&"-separated component text (see _hd_system_raw).
_HD_RAW_SYSTEMS: Final[dict[str, str]] = {}


def _hd_system(namespace: str, universal: str, kind: str) -> str | None:
    if not universal and not kind:
        hit = _NS_SYSTEMS.get(namespace)
        if hit is None:
            hit = _hd_system_uncached(namespace, universal, kind) or ""
            if len(_NS_SYSTEMS) < MEMO_MAX:
                _NS_SYSTEMS[namespace] = hit
        return hit or None
    key = (namespace, universal, kind)
    hit = _HD_SYSTEMS.get(key)
    if hit is None:
        hit = _hd_system_uncached(namespace, universal, kind) or ""
        if len(_HD_SYSTEMS) < MEMO_MAX:
            _HD_SYSTEMS[key] = hit
    return hit or None


def _hd_system_uncached(namespace: str, universal: str, kind: str) -> str | None:
    kind = kind.upper()
    if universal:
        if kind in ("ISO", "HL7") or (not kind and universal[:1].isdigit() and "." in universal):
            return f"urn:oid:{universal}"
        if kind == "UUID":
            return f"urn:uuid:{universal}"
        if kind in ("URI", "URL") or universal.startswith(("http://", "https://", "urn:")):
            return universal
    if namespace:
        return local_system(namespace)
    return None


_UNRESERVED: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~"


def quote_part(text: str) -> str:
    """``urllib.parse.quote(text, safe="")``, without the call when every character is unreserved."""
    return text if not text.rstrip(_UNRESERVED) else quote(text, safe="")


def local_system(namespace: str) -> str:
    return LOCAL_SYSTEM_BASE + quote_part(namespace.strip())


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
    v = rep.vals()  # v[i] == rep.get(i + 1)
    codings = []
    # A coding only counts with a code: no code, no coding (so _coding's display-only case is skipped).
    if v[0]:
        codings.append(_coding(v[0], v[1], v[2], v[13]))
    if v[3]:
        codings.append(_coding(v[3], v[4], v[5], v[16]))
    text = v[8] or (v[1] if not codings else "")
    if not text and not codings:
        text = v[0] or v[4]
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
    v = rep.vals()  # v[i] == rep.get(i + 1)
    o = 1 if xcn else 0
    family = v[o]  # == rep.part(1 + o).get(1): the surname subcomponent
    # XPN.15 "called by" is a given name too (as the reference converter and IG XPN map treat it).
    name: dict[str, Any] = {}
    if family:
        name["family"] = family
    # Explicit appends, not comprehensions over tuple literals (compiled, those box and iterate
    # the tuple generically).
    given: list[str] = []
    suffix: list[str] = []
    if xcn:
        if v[2]:
            given.append(v[2])
        if v[3]:
            given.append(v[3])
        if v[4]:
            suffix.append(v[4])
        if v[6]:
            suffix.append(v[6])
    else:
        if v[1]:
            given.append(v[1])
        if v[2]:
            given.append(v[2])
        if v[14]:
            given.append(v[14])
        if v[3]:
            suffix.append(v[3])
        if v[5]:
            suffix.append(v[5])
        if v[13]:
            suffix.append(v[13])
    if given:
        name["given"] = given
    if suffix:
        name["suffix"] = suffix
    prefix = v[4 + o]
    if prefix:
        name["prefix"] = [prefix]
    if not name:
        return None
    if not xcn:
        use = lookup("0200-use", v[6])
        if use:
            name["use"] = use
        start, end = date(v[11]) if v[11] else None, date(v[12]) if v[12] else None
        if not (start or end) and v[9]:
            span = rep.part(10)
            start, end = date(span.get(1)), date(span.get(2))
        if start or end:
            name["period"] = period(start, end)
    return name


def address(rep: Rep) -> dict[str, Any] | None:
    """XAD → Address (use/type from table 0190)."""
    if not rep.raw:
        return None
    v = rep.vals()  # v[i] == rep.get(i + 1)
    # SAD.1 street, SAD.2 street name, SAD.3 dwelling number, XAD.2 other designation,
    # XAD.19 addressee-style extra line: each a line, in that order.
    lines: list[str] = []
    if v[0]:
        lines.append(v[0])
    if rep.subsep is not None and rep.subsep in rep.raw_comp(1):
        sad = rep.part(1)
        for line in (sad.get(2), sad.get(3)):
            if line:
                lines.append(line)
    if v[1]:
        lines.append(v[1])
    if v[18]:
        lines.append(v[18])
    out: dict[str, Any] = {}
    if lines:
        out["line"] = lines
    if v[2]:
        out["city"] = v[2]
    if v[3]:
        out["state"] = v[3]
    if v[4]:
        out["postalCode"] = v[4]
    if v[5]:
        out["country"] = v[5]
    if v[8]:
        out["district"] = v[8]
    kind = lookup("0190", v[6])
    if kind:
        out.update(kind)
    start, end = v[12], v[13]
    if not (start or end) and v[11]:
        start, end = rep.get(12, 1), rep.get(12, 2)
    start_d, end_d = date(start) if start else None, date(end) if end else None
    if start_d or end_d:
        out["period"] = period(start_d, end_d)
    if len(out) == ("use" in out) + ("type" in out):  # nothing but use/type (or nothing at all)
        return None
    return out


def contact_point(rep: Rep, default_use: str | None = None) -> dict[str, Any] | None:
    """XTN → ContactPoint (use from 0201, system from 0202)."""
    if not rep.raw:
        return None
    v = rep.vals()  # v[i] == rep.get(i + 1)
    equipment = v[2]
    kind = lookup("0202", equipment) or {}
    value = v[0]
    if equipment in ("Internet", "X.400") or (not value and v[3]):
        value = v[3] or value
    if not value:
        parts = [p for p in (v[4], v[5], v[6]) if p]
        value = " ".join(parts)
        if value and v[7]:
            value += f" ext. {v[7]}"
    if not value:
        return None
    out: dict[str, Any] = {"system": kind.get("system", "email" if "@" in value else "phone"), "value": value}
    use = kind.get("use") or lookup("0201", v[1]) or default_use
    if use:
        out["use"] = use
    return out


def identifier(rep: Rep) -> dict[str, Any] | None:
    """CX → Identifier (system from CX.4 assigning authority, type from CX.5/0203)."""
    v = rep.vals()  # v[i] == rep.get(i + 1)
    value = v[0]
    if not value:
        return None
    out: dict[str, Any] = {"value": value}
    system = _hd_system_raw(rep.raw_comp(4), rep)
    if system is None and v[8]:
        system = hd_system(rep.part(9))  # CX.9 assigning jurisdiction
    if system is None and v[9]:
        system = hd_system(rep.part(10))  # CX.10 assigning agency
    if system:
        out["system"] = system
    type_code = v[4]
    if type_code:
        out["type"] = {"coding": [_type_coding(type_code)]}
    start = date(v[6]) if v[6] else None
    end = date(v[7]) if v[7] else None
    if start or end:
        out["period"] = period(start, end)
    namespace = v[3]
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
    out: dict[str, str] = {}
    if start:
        out["start"] = start
    if end:
        out["end"] = end
    return out
