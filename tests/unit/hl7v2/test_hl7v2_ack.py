"""peek_msh and build_ack for v2.3 and v2.5+ senders."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from schemas.hl7v2 import AckError, Hl7ParseError, ack_code_of, build_ack, parse_message, peek_msh

V23 = b"MSH|^~\\&|LAB|HOSP|EHR|CLINIC|20050110045504||ORU^R01|CTL23|P|2.3\rPID|1||123\r"
V251 = (
    b"MSH|^~\\&|LAB^1.2.3^ISO|HOSP|EHR|CLINIC|20240110045504+0100||ADT^A08^ADT_A01|CTL25|T|2.5.1"
    b"||||||UNICODE UTF-8\rPID|1||123\r"
)
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def test_peek_msh_reads_only_the_header() -> None:
    h = peek_msh(V251 + b"\rgarbage that would not tokenize \x00")
    assert (h.message_type, h.trigger, h.structure) == ("ADT", "A08", "ADT_A01")
    assert h.sending_app == "LAB" and h.sending_facility == "HOSP"
    assert h.receiving_app == "EHR" and h.receiving_facility == "CLINIC"
    assert (h.control_id, h.processing_id, h.version, h.charset) == ("CTL25", "T", "2.5.1", "UNICODE UTF-8")
    assert (h.field_sep, h.encoding_chars) == ("|", "^~\\&")


def test_peek_msh_custom_delimiters_and_framing() -> None:
    h = peek_msh(b"\x0bMSH#!@$%#A#B#C#D#ts##ADT!A04#9#P#2.4\r\x1c\r")
    assert (h.field_sep, h.encoding_chars, h.trigger, h.control_id) == ("#", "!@$%", "A04", "9")


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"PID|1", None),
        (b"MSH|^~|x", 2),
        (b"MSH|^~\\&|A|B|C|D|ts||||P|2.5", 9),
        (b"MSH|^~\\&|A||||||ADT^A01", 10),
    ],
)
def test_peek_msh_rejects_unusable_headers(raw: bytes, field: int | None) -> None:
    with pytest.raises(Hl7ParseError) as info:
        peek_msh(raw)
    assert info.value.field == field


def test_ack_v23_uses_err1_and_msa3() -> None:
    err = AckError(102, "invalid timestamp '1988x'", segment_id="PID", segment_index=2, field=7)
    ack = build_ack(peek_msh(V23), "AE", error=err, control_id="ACK1", now=NOW)
    msg = parse_message(ack)
    msh, msa, er = msg.msh, msg.segment("MSA"), msg.segment("ERR")
    assert (msh.get(3), msh.get(4), msh.get(5), msh.get(6)) == ("EHR", "CLINIC", "LAB", "HOSP")
    assert msh.field(9) == "ACK^R01"  # v2.3 MSG type has no structure component
    assert (msh.get(10), msh.get(11), msh.get(12)) == ("ACK1", "P", "2.3")
    assert msh.get(7) == "20240506070809+0000"
    assert (msa.get(1), msa.get(2), msa.get(3)) == ("AE", "CTL23", "invalid timestamp '1988x'")
    assert (er.get(1, comp=1), er.get(1, comp=2), er.get(1, comp=3)) == ("PID", "2", "7")
    assert (er.get(1, comp=4, sub=1), er.get(1, comp=4, sub=3)) == ("102", "HL70357")
    assert ack_code_of(ack) == ("AE", "CTL23")


def test_ack_v25_uses_err2_to_err8() -> None:
    err = AckError(101, "PID-3 | required", segment_id="PID", segment_index=2, field=3)
    ack = build_ack(peek_msh(V251), "AR", error=err, now=NOW)
    msg = parse_message(ack)
    msh, msa, er = msg.msh, msg.segment("MSA"), msg.segment("ERR")
    assert msh.get(3) == "EHR" and msh.get(5) == "LAB" and msh.get(5, comp=2) == "1.2.3"
    assert msh.field(9) == "ACK^A08^ACK"
    assert msh.get(12) == "2.5.1" and msh.get(18) == "UNICODE UTF-8"
    assert msh.get(10) and msh.get(10) != "CTL25" and len(msh.get(10)) <= 20
    assert msa.field(3) == ""
    assert er.field(1) == ""
    assert er.field(2) == "PID^2^3"
    assert er.get(3, comp=1) == "101"
    assert (er.get(3, comp=2), er.get(3, comp=3)) == ("Required field missing", "HL70357")
    assert er.get(4) == "E"
    assert er.get(8) == "PID-3 | required"  # escaped on the wire, decoded on read
    assert ack_code_of(ack) == ("AR", "CTL25")


def test_ack_accept_has_no_err_and_keeps_encoding_chars() -> None:
    raw = b"MSH#!@$%#A#B#C#D#ts##ADT!A04#9#P#2.6\r"
    ack = build_ack(peek_msh(raw), "CA", now=NOW)
    assert ack.startswith(b"MSH#!@$%#C#D#A#B#")
    msg = parse_message(ack)
    assert msg.segment("ERR") is None
    assert msg.msh.field(9) == "ACK!A04!ACK"
    assert ack_code_of(ack) == ("CA", "9")


def test_best_effort_ack_without_header() -> None:
    parse_error = Hl7ParseError("message does not start with an MSH segment", hl7_error_code=100)
    err = AckError.from_parse_error(parse_error)
    ack = build_ack(None, "AR", error=err, now=NOW)
    msg = parse_message(ack)
    assert msg.enc.chars == "^~\\&" and msg.version == "2.5"
    assert msg.segment("ERR").get(3) == "100"
    assert ack_code_of(ack) == ("AR", "")


def test_ack_code_of_rejects_non_acks() -> None:
    with pytest.raises(Hl7ParseError):
        ack_code_of(V23)
    with pytest.raises(Hl7ParseError):
        ack_code_of(b"MSH|^~\\&|A||||||ACK|1|P|2.5\rMSA|ZZ|1")


def test_every_corpus_message_can_be_acked(corpus: dict[str, bytes]) -> None:
    for raw in corpus.values():
        header = peek_msh(raw)
        assert ack_code_of(build_ack(header, "AA")) == ("AA", header.control_id)
