"""Tokenizer: separators, escapes, the MSH numbering quirk, custom delimiters, laziness."""

from __future__ import annotations

import pytest

from schemas.hl7v2 import Hl7ParseError, parse_message
from schemas.hl7v2.parser import Encoding, escape, unescape

ADT = (
    "MSH|^~\\&|SEND|FAC^1.2.3^ISO|RECV|RFAC|20240102030405+0100||ADT^A01^ADT_A01|CTRL1|P|2.5.1\r"
    "EVN|A01|20240102030405\r"
    "PID|1||123^^^HOSP^MR~999-99-9999^^^SSA^SS||DOE^JOHN^Q||19800101|M|||1 MAIN ST^^TOWN^ST^12345\r"
    "ZXY|custom|value\r"
)


def test_segments_and_header() -> None:
    msg = parse_message(ADT)
    assert [s.id for s in msg] == ["MSH", "EVN", "PID", "ZXY"]
    assert msg.message_type == ("ADT", "A01", "ADT_A01")
    assert msg.control_id == "CTRL1"
    assert msg.version == "2.5.1"
    assert msg.segment("ZXY").get(2) == "value"  # Z-segments are kept


def test_msh_numbering_quirk() -> None:
    msh = parse_message(ADT).msh
    assert msh.get(1) == "|"
    assert msh.get(2) == "^~\\&"
    assert msh.get(3) == "SEND"
    assert msh.get(4, comp=2) == "1.2.3"
    assert msh.get(9, comp=2) == "A01"
    assert msh.repetitions(2)[0].raw == "^~\\&"  # MSH-2 is never split on its own delimiters


@pytest.mark.parametrize("sep", ["\r", "\n", "\r\n"])
def test_line_separators(sep: str) -> None:
    msg = parse_message(ADT.replace("\r", sep).encode())
    assert [s.id for s in msg] == ["MSH", "EVN", "PID", "ZXY"]
    assert msg.segment("PID").get(5, comp=2) == "JOHN"


def test_repetitions_components_subcomponents() -> None:
    pid = parse_message(ADT).segment("PID")
    reps = pid.repetitions(3)
    assert [r.get(1) for r in reps] == ["123", "999-99-9999"]
    assert pid.get(3, rep=1, comp=5) == "SS"
    assert pid.get(3, rep=5) == ""
    assert pid.get(99) == ""
    assert pid.get(5, comp=9) == ""
    msg = parse_message("MSH|^~\\&|A|B^x&y&z\rPID|1||a&b&c^d")
    assert msg.msh.get(4, comp=2, sub=3) == "z"
    pid = msg.segment("PID")
    assert pid.get(3, comp=1, sub=2) == "b"
    assert pid.rep(3).part(1).get(3) == "c"
    assert pid.get(3, comp=2, sub=2) == ""


def test_custom_encoding_characters_are_read_not_assumed() -> None:
    raw = "MSH*!@$%*APP*FAC\rPID*1**12!3@45%6**SMITH!JOHN"
    msg = parse_message(raw)
    assert msg.enc.chars == "!@$%"
    pid = msg.segment("PID")
    assert pid.get(3, rep=0, comp=2) == "3"
    assert pid.get(3, rep=1, comp=1, sub=2) == "6"
    assert pid.get(5, comp=2) == "JOHN"
    assert msg.msh.get(1) == "*"


def test_escape_sequences_decoded_on_read() -> None:
    raw = "MSH|^~\\&|A\rNTE|1||a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X41C3A9\\g\\.br\\h\\H\\i\\N\\"
    nte = parse_message(raw).segment("NTE")
    assert nte.field(3).startswith("a\\F\\")  # raw access stays escaped
    assert nte.get(3) == "a|b^c&d~e\\fAég\nhi"


def test_unknown_and_unterminated_escapes_are_kept_literally() -> None:
    enc = Encoding("|", "^~\\&")
    assert unescape("a\\Zfoo\\b", enc) == "a\\Zfoo\\b"
    assert unescape("tail\\", enc) == "tail\\"
    assert unescape("x\\F\\y\\z", enc) == "x|y\\z"
    assert unescape("\\XZZ\\", enc) == "\\XZZ\\"


def test_escape_round_trip() -> None:
    enc = Encoding("|", "^~\\&")
    text = "a|b^c~d&e\\f\nline"
    assert unescape(escape(text, enc), enc) == text


def test_fields_are_lazy_and_cached() -> None:
    msg = parse_message(ADT)
    pid = msg.segment("PID")
    assert pid._fields is None
    pid.get(3)
    cached = pid._fields
    assert cached is not None
    pid.get(5)
    assert pid._fields is cached


def test_bom_mllp_framing_and_trailing_blank_lines() -> None:
    raw = b"\x0b\xef\xbb\xbf" + ADT.encode() + b"\r\n\x1c\r"
    assert parse_message(raw).control_id == "CTRL1"


def test_latin1_fallback_and_declared_charset() -> None:
    msg = parse_message(b"MSH|^~\\&|A\rPID|1||||M\xfcller")
    assert msg.segment("PID").get(5) == "Müller"
    # Valid UTF-8 bytes, but the sender says 8859/1: honour the declaration.
    declared = "MSH|^~\\&|A||||||ADT^A01|1|P|2.5||||||8859/1\rPID|1||||Ã©".encode("latin-1")
    assert parse_message(declared).segment("PID").get(5) == "Ã©"
    utf8 = "MSH|^~\\&|A||||||ADT^A01|1|P|2.5||||||UNICODE UTF-8\rPID|1||||é".encode()
    assert parse_message(utf8).segment("PID").get(5) == "é"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"", "empty message"),
        (b"PID|1", "does not start with an MSH"),
        (b"MSH", "too short"),
        (b"MSH|^~|A|B", "encoding characters"),
        (b"MSH|^^\\&|A|B", "distinct"),
        (b"MSHA^~\\&A", "field separator"),
        (b"MSH|^~\\&|A\rp1d|x", "invalid segment id"),
        (b"MSH|^~\\&|A\rPIDX|x", "followed by the field separator"),
    ],
)
def test_malformed_input_raises_hl7_parse_error(raw: bytes, fragment: str) -> None:
    with pytest.raises(Hl7ParseError, match=fragment):
        parse_message(raw).validate()


def test_error_message_names_location() -> None:
    err = Hl7ParseError("invalid timestamp '1988x'", segment_index=3, segment_id="PID", field=7)
    assert str(err) == "PID-7 (segment 3): invalid timestamp '1988x'"
    assert isinstance(err, ValueError)
    with pytest.raises(Hl7ParseError) as info:
        parse_message(b"MSH|^~\\&|A\rEVN|1\rp!d|x").segments()
    assert info.value.segment_index == 3


def test_size_limit() -> None:
    with pytest.raises(Hl7ParseError, match="exceeds"):
        parse_message(ADT.encode(), max_bytes=10)


def test_whole_corpus_tokenizes(corpus: dict[str, bytes]) -> None:
    assert len(corpus) == 139
    for name, raw in corpus.items():
        msg = parse_message(raw)
        assert msg.msh.id == "MSH", name
        assert msg.message_type[0], name
        for seg in msg:
            seg.fields()
