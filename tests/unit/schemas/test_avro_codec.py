"""The compiled envelope codec writes exactly the Avro binary fastavro writes, and reads fastavro's."""

from __future__ import annotations

from io import BytesIO

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.avro_codec import AvroCodecError, compile_codec
from schemas.envelope import EnvelopeError, _codec, decode_event, encode_event, parsed_schema

text = st.text(max_size=80)
opt_text = st.none() | text
records = st.fixed_dictionaries({
    "event_id": text,
    "event_type": text,
    "source": text,
    "source_message_id": opt_text,
    "patient": st.fixed_dictionaries({
        "euid": opt_text,
        "identifiers": st.lists(st.fixed_dictionaries({"system": opt_text, "value": text, "type": opt_text}),
                                max_size=70),  # past 63 items the array count takes two bytes
    }),
    "occurred_at": opt_text,
    "received_at": text,
    "resources_json": st.text(max_size=300),
    "destination": opt_text,
    "purpose": opt_text,
    "lineage": st.fixed_dictionaries({
        "topic": text,
        "partition": st.integers(-(2**31), 2**31 - 1),
        "offset": st.integers(-(2**63), 2**63 - 1),
        "stages": st.lists(text, max_size=5),
    }),
})


def _fastavro_bytes(record: dict) -> bytes:
    buf = BytesIO()
    fastavro.schemaless_writer(buf, parsed_schema(), record)
    return buf.getvalue()


@settings(max_examples=300, deadline=None)
@given(records)
def test_same_bytes_as_fastavro_both_ways(record: dict) -> None:
    encode, decode = _codec()
    ours = encode(record)
    assert ours == _fastavro_bytes(record)
    assert decode(ours) == fastavro.schemaless_reader(BytesIO(ours), parsed_schema(), None) == record


def test_missing_fields_take_their_schema_defaults_like_fastavro() -> None:
    record = {"event_id": "e", "event_type": "ADT^A01", "source": "s", "patient": {}, "received_at": "t",
              "resources_json": "[]", "lineage": {"topic": "raw", "partition": 0, "offset": 7}}
    assert _codec()[0](record) == _fastavro_bytes(record)


def test_envelope_round_trip_and_clear_errors() -> None:
    event = {"event_id": "e", "event_type": "ADT^A01", "source": "s", "source_message_id": None,
             "patient": {"euid": None, "identifiers": [{"system": "urn:x", "value": "1", "type": "MR"}]},
             "occurred_at": None, "received_at": "2024-01-01T00:00:00Z", "resources": [{"resourceType": "Patient"}],
             "destination": None, "purpose": None,
             "lineage": {"topic": "raw.hl7v2.x", "partition": 1, "offset": 2, "stages": ["normalize"]}}
    assert decode_event(encode_event(event)) == event
    with pytest.raises(EnvelopeError, match=r"ClinicalEvent\.event_type"):
        encode_event({**event, "event_type": None})
    with pytest.raises(EnvelopeError, match="lineage"):
        encode_event({k: v for k, v in event.items() if k != "lineage"})
    data = encode_event(event)
    for broken in (data[:-3], data + b"\x00", b"\xff" * 20, b""):
        with pytest.raises(EnvelopeError):
            decode_event(broken)


def test_unsupported_schema_types_are_refused_at_compile_time() -> None:
    with pytest.raises(AvroCodecError, match="bytes"):
        compile_codec({"type": "record", "name": "R", "fields": [{"name": "b", "type": "bytes"}]})
    with pytest.raises(AvroCodecError, match="union"):
        compile_codec({"type": "record", "name": "R", "fields": [{"name": "u", "type": ["string", "null"]}]})
