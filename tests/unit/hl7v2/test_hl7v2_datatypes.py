"""Data-type mappers: XPN, XAD, XTN, CX, CWE, DTM/TS, XCN, PL, HD, EI."""

from __future__ import annotations

import pytest

from schemas.hl7v2 import Hl7ParseError, parse_message
from schemas.hl7v2.parser import Encoding, Rep
from streams.normalize.hl7v2 import convert_message
from streams.normalize.hl7v2 import datatypes as dt
from streams.normalize.hl7v2.context import Ctx

ENC = Encoding("|", "^~\\&")


def rep(raw: str) -> Rep:
    return Rep(raw, ENC, "^", "&")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024", "2024"),
        ("202402", "2024-02"),
        ("20240229", "2024-02-29"),
        ("2024022913", "2024-02-29T13:00:00Z"),
        ("202402291305", "2024-02-29T13:05:00Z"),
        ("20240229130507", "2024-02-29T13:05:07Z"),
        ("20240229130507.1234-0500", "2024-02-29T13:05:07.1234-05:00"),
        ("198808181126+0215", "1988-08-18T11:26:00+02:15"),
        ("20240229130507+0000", "2024-02-29T13:05:07Z"),
        ("2004062916460000", "2004-06-29T16:46:00.00Z"),
        ("", None),
    ],
)
def test_dtm_precision_and_offset(value: str, expected: str | None) -> None:
    assert dt.datetime_(value) == expected


@pytest.mark.parametrize("value", ["1988x", "20231301", "20230230", "20230101250000", "2023010112+1500", "12"])
def test_dtm_rejects_garbage(value: str) -> None:
    with pytest.raises(dt.DataTypeError):
        dt.datetime_(value)


def test_date_instant_and_default_zone() -> None:
    assert dt.date("19880818112600+0215") == "1988-08-18"
    assert dt.instant("202402291305") is None  # instants need seconds
    assert dt.instant("20240229130507", "+01:00") == "2024-02-29T13:05:07+01:00"
    assert dt.instant_padded("2024") == "2024-01-01T00:00:00Z"


def _general(value: str, default_tz: str) -> tuple[object, object, object]:
    """(datetime_, instant, date) of ``value`` through the general path only (regex/tuple), errors as values."""
    try:
        parts = dt._split_ts(value)
    except dt.DataTypeError as exc:
        return ("error", str(exc)), ("error", str(exc)), ("error", str(exc))
    if parts is None:
        return None, None, None
    year, month, day = parts[:3]
    day_only = year if not month else f"{year}-{month}-{day}" if day else f"{year}-{month}"
    return dt._format_dt(parts, default_tz), dt._format_dt(parts, default_tz) if parts[5] else None, day_only


def _fast(value: str, default_tz: str) -> tuple[object, object, object]:
    out: list[object] = []
    for fn in (lambda: dt.datetime_(value, default_tz), lambda: dt.instant(value, default_tz),
               lambda: dt.date(value)):
        try:
            out.append(fn())
        except dt.DataTypeError as exc:
            out.append(("error", str(exc)))
    return out[0], out[1], out[2]


_TS_GRID = [y + m + d + t + z
            for y in ("2024", "2023", "2000", "1900")
            for m in ("00", "01", "02", "04", "12", "13", "1a")
            for d in ("00", "01", "28", "29", "30", "31", "32")
            for t in ("", "1230", "123059", "2400", "2360", "123060", "12", "123059.1")
            for z in ("", "+0000", "-0000", "+0100", "-0530", "+1400", "+1500", "+0160", "+01a0", " ")]


def test_timestamp_fast_path_matches_the_general_path() -> None:
    """The slicing fast path (common shapes) gives exactly what the general path gives, errors included."""
    odd = ["\uff12\uff10\uff12\uff14\uff10\uff11\uff10\uff11", "20240101\u0663", "202401011230591"]  # non-ASCII digits
    mismatches = [(v, tz) for v in [*_TS_GRID, *odd] for tz in ("Z", "+01:00") if _fast(v, tz) != _general(v, tz)]
    assert not mismatches, mismatches[:5]


def test_padded_instant_fast_path_matches_the_general_path() -> None:
    def general(value: str, tz: str) -> object:
        try:
            parts = dt._split_ts(value)
        except dt.DataTypeError as exc:
            return ("error", str(exc))
        if parts is None:
            return None
        year, month, day, hour, minute, second, frac, off = parts
        return (f"{year}-{month or '01'}-{day or '01'}T{hour or '00'}:{minute or '00'}:{second or '00'}{frac}"
                f"{dt._fhir_tz(off, tz)}")

    def fast(value: str, tz: str) -> object:
        try:
            return dt.instant_padded(value, tz)
        except dt.DataTypeError as exc:
            return ("error", str(exc))

    values = [*_TS_GRID, "\uff12\uff10\uff12\uff14\uff10\uff11\uff10\uff11", "2024", "202401", "2024010112"]
    mismatches = [(v, tz) for v in values for tz in ("Z", "+01:00") if fast(v, tz) != general(v, tz)]
    assert not mismatches, mismatches[:5]


def test_hd_memo_by_text_matches_the_composite() -> None:
    enc = rep("x").enc
    for raw in ("GHH&2.16.840.1.113883.19.5&ISO", "GHH&&", "&1.2.3", "A&http://x/y&URI", "B&u-1&UUID", "C&&L"):
        comp = Rep(raw, enc, "&", None)
        expected = dt._hd_system(comp.get(1), comp.get(2), comp.get(3))
        for _ in range(2):  # computed, then from the memo
            assert dt._hd_system_raw(raw, rep(raw)) == expected


def test_vocabulary_memos_are_bounded() -> None:
    for i in range(dt.MEMO_MAX + 10):
        assert dt.hd_system(rep(f"NS{i}")) == f"urn:clinstream:v2:ns:NS{i}"
    assert len(dt._NS_SYSTEMS) <= dt.MEMO_MAX
    assert dt.hd_system(rep("NS0^1.2.3^ISO")) == "urn:oid:1.2.3"


def test_xpn_human_name() -> None:
    name = dt.human_name(rep("EVERYMAN&&&&Aniston^ADAM^A^III^Dr.^MD^L"))
    assert name == {"family": "EVERYMAN", "given": ["ADAM", "A"], "suffix": ["III", "MD"], "prefix": ["Dr."],
                    "use": "official"}
    assert dt.human_name(rep("")) is None


def test_xad_address() -> None:
    addr = dt.address(rep("1000&Hospital Lane^Ste. 123^Ann Arbor^MI^99999^USA^H^^Washtenaw"))
    assert addr == {"line": ["1000", "Hospital Lane", "Ste. 123"], "city": "Ann Arbor", "state": "MI",
                    "postalCode": "99999", "country": "USA", "district": "Washtenaw", "use": "home"}
    assert dt.address(rep("^^^^^^M")) is None
    assert dt.address(rep("1 Main^^X^^^^M"))["type"] == "postal"


def test_xtn_contact_point() -> None:
    assert dt.contact_point(rep("(555)555-1234^PRN^PH")) == {"system": "phone", "value": "(555)555-1234",
                                                             "use": "home"}
    assert dt.contact_point(rep("^NET^Internet^a@b.org")) == {"system": "email", "value": "a@b.org",
                                                              "use": "home"}
    assert dt.contact_point(rep("^WPN^CP^^1^813^8853999^12")) == {"system": "phone",
                                                                 "value": "1 813 8853999 ext. 12", "use": "mobile"}
    assert dt.contact_point(rep("8885551212"), "work") == {"system": "phone", "value": "8885551212", "use": "work"}


def test_cx_identifier_and_hd_system() -> None:
    ident = dt.identifier(rep("12345^^^HOSP&1.2.840.1&ISO^MR^^20200101^20201231"))
    assert ident == {"value": "12345", "system": "urn:oid:1.2.840.1",
                     "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR",
                                          "display": "Medical record number"}]},
                     "period": {"start": "2020-01-01", "end": "2020-12-31"}}
    local = dt.identifier(rep("9^^^MY HOSP"))
    assert local["system"] == dt.LOCAL_SYSTEM_BASE + "MY%20HOSP"
    assert local["assigner"] == {"display": "MY HOSP"}
    assert dt.hd_system(rep("x^https://ids.example.org/mrn^URI")) == "https://ids.example.org/mrn"
    assert dt.hd_system(rep("^6ba7b810-9dad-11d1-80b4-00c04fd430c8^UUID")).startswith("urn:uuid:")


def test_ei_identifier() -> None:
    assert dt.ei_identifier(rep("ORD1^LAB^2.16.1^ISO"), "PLAC") == {
        "value": "ORD1", "system": "urn:oid:2.16.1",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PLAC",
                             "display": "Placer Identifier"}]}}


def test_cwe_codeable_concept() -> None:
    cc = dt.codeable(rep("8867-4^Heart rate^LN^HR^Pulse^99LOC^^^Heart beat"))
    assert cc == {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"},
                             {"system": dt.LOCAL_SYSTEM_BASE + "99LOC", "code": "HR", "display": "Pulse"}],
                  "text": "Heart beat"}
    assert dt.codeable(rep("M^Married^HL70002"))["coding"][0]["system"] == \
        "http://terminology.hl7.org/CodeSystem/v2-0002"
    assert dt.codeable(rep("^^^^^^^^free text only")) == {"text": "free text only"}
    assert dt.codeable(rep("")) is None


def test_number() -> None:
    assert dt.number("42") == 42
    assert dt.number("+4.50") == 4.5
    with pytest.raises(dt.DataTypeError):
        dt.number("4,5")
    with pytest.raises(dt.DataTypeError):
        dt.number("nan")


def _ctx() -> Ctx:
    return Ctx(parse_message("MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5"), "test", "Z")


def test_xcn_practitioner_is_deduplicated() -> None:
    ctx = _ctx()
    first = ctx.practitioner(rep("1234^Smith^John^Q^Jr^Dr^MD^^NPI&2.16.840.1.113883.4.6&ISO"))
    again = ctx.practitioner(rep("1234^Smith^John^Q^Jr^Dr^MD^^NPI&2.16.840.1.113883.4.6&ISO"))
    assert first == again
    res = ctx.get(first)
    assert res["identifier"] == [{"value": "1234", "system": "urn:oid:2.16.840.1.113883.4.6"}]
    assert res["name"] == [{"family": "Smith", "given": ["John", "Q"], "suffix": ["Jr", "MD"], "prefix": ["Dr"]}]


def test_pl_location() -> None:
    ctx = _ctx()
    ref = ctx.location(rep("4E^136^B^GOOD HOSP^^N^Main^4"))
    assert ctx.get(ref)["name"] == "GOOD HOSP Main 4 4E 136 B"
    assert ctx.location(rep("")) is None


def test_bad_timestamp_is_reported_with_location() -> None:
    raw = "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\rEVN|A01|20240101\rPID|1||123||DOE^J||1988x|M"
    with pytest.raises(Hl7ParseError) as info:
        convert_message(raw)
    assert str(info.value) == "PID-7 (segment 3): invalid timestamp '1988x'"
