"""The compiled envelope codec writes exactly the Avro binary fastavro writes, and reads fastavro's."""

from __future__ import annotations

import copy
import json
from io import BytesIO
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.avro_codec import AvroCodecError, compile_codec, parsing_canonical_form
from schemas.envelope import SCHEMA_PATH, EnvelopeError, _codec, decode_event, encode_event, parsed_schema

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


# --- Parsing Canonical Form (the fingerprint's input), against fastavro's ------------------------

_SCHEMAS = [
    "string",
    {"type": "long"},
    {"type": "record", "name": "A", "namespace": "org.x", "doc": "dropped", "aliases": ["B"], "fields": [
        {"name": "n", "type": {"type": "int"}, "default": 0, "doc": "dropped"},
        {"name": "e", "type": {"type": "enum", "name": "Colour", "symbols": ["RED", "GREEN"]}},
        {"name": "f", "type": {"type": "fixed", "name": "org.y.Hash", "size": 16}},
        {"name": "again", "type": "Colour"},
        {"name": "m", "type": {"type": "map", "values": ["null", "org.y.Hash"]}},
        {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": [
            {"name": "xs", "type": {"type": "array", "items": "double"}},
            {"name": "café", "type": ["null", "bytes", "boolean", "float"]}]}},
    ]},
    json.loads(SCHEMA_PATH.read_text()),
]


@pytest.mark.parametrize("schema", _SCHEMAS, ids=["primitive", "wrapped-primitive", "named-types", "envelope"])
def test_parsing_canonical_form_is_fastavros(schema: Any) -> None:
    from fastavro.schema import parse_schema, to_parsing_canonical_form

    assert parsing_canonical_form(schema) == to_parsing_canonical_form(parse_schema(copy.deepcopy(schema)))
