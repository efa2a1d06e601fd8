"""Splitting HL7 v2 files and NDJSON into records (pure)."""

from __future__ import annotations

import pytest

from connectors.sources.filedrop import FileFailure, hl7_records, ndjson_records
from connectors.sources.hl7batch import Hl7FileError, split_hl7_file


def msg(i: int) -> str:
    return f"MSH|^~\\&|LAB|H|CLIN|H|20240101||ORU^R01|C{i}|P|2.5\nPID|1||M{i}^^^H^MR\nOBX|1|NM|HB||13"


def batch(n: int, bts: int | None = None, trailer: bool = True) -> bytes:
    body = "\r\n".join(msg(i) for i in range(n))
    text = f"FHS|^~\\&|LAB\nBHS|^~\\&|LAB\n{body}\n"
    if trailer:
        text += f"BTS|{n if bts is None else bts}\nFTS|1\n"
    return text.encode()


def test_batch_file_splits_into_cr_separated_messages():
    f = split_hl7_file(batch(3))
    assert f.batched and len(f.messages) == 3
    assert f.messages[1] == msg(1).replace("\n", "\r").encode() + b"\r"


def test_plain_file_with_one_or_many_messages():
    assert len(split_hl7_file(msg(1).encode()).messages) == 1
    assert len(split_hl7_file(("\r".join(msg(i) for i in range(4))).encode()).messages) == 4


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (batch(3, bts=5), "BTS-1 says 5 messages, found 3"),
        (batch(3, trailer=False), "truncated"),
        (b"", "empty"),
        (b"hello\nworld", "not an HL7 v2 file"),
    ],
)
def test_untrustworthy_files_are_refused_whole(data: bytes, needle: str):
    with pytest.raises(Hl7FileError, match=needle):
        split_hl7_file(data)


def test_bad_message_in_a_batch_is_a_record_error_not_a_file_error():
    data = batch(2).replace(b"ORU^R01|C1", b"|C1")  # message 1 loses MSH-9
    records = hl7_records(data, 10_000)
    assert [r.error is None for r in records] == [True, False]
    assert records[1].error_class == "Hl7ParseError" and "MSH-9" in (records[1].error or "")
    assert records[0].key == b"H|M0"


def test_ndjson_lines_with_line_numbers():
    data = b'{"resourceType":"Patient","id":"a"}\n\n{"oops"\n[1]\n{"resourceType":"Observation"}\r\n'
    recs = ndjson_records(data, 10_000, 16)
    assert [(r.index, r.line, r.error_class) for r in recs] == [
        (0, 1, None), (1, 3, "InvalidJson"), (2, 4, "NotAFhirResource"), (3, 5, None)]
    assert recs[0].key == b"Patient/a"
    with pytest.raises(FileFailure):
        ndjson_records(b"\n\n", 10_000, 16)
