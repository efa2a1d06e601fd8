import pytest

from schemas.envelope import ClinicalEvent, EnvelopeError, decode_event, encode_event, event_id_for, schema_fingerprint


def sample() -> dict:
    return {
        "event_id": event_id_for("feed", b"MSH|..."),
        "event_type": "ADT^A01",
        "source": "feed",
        "source_message_id": "c1",
        "patient": {"euid": None, "identifiers": [{"system": "urn:x", "value": "1", "type": "MR"}]},
        "occurred_at": "2024-01-01T12:00:00Z",
        "received_at": "2024-01-01T12:00:01.000Z",
        "resources": [{"resourceType": "Patient", "id": "p1", "name": [{"family": "DOE"}]}],
        "destination": None,
        "purpose": None,
        "lineage": {"topic": "raw.hl7v2.feed", "partition": 0, "offset": 7, "stages": ["normalize"]},
    }


def test_event_id_is_deterministic_per_source_and_bytes():
    assert event_id_for("a", b"x") == event_id_for("a", b"x")
    assert event_id_for("a", b"x") != event_id_for("b", b"x")
    assert event_id_for("a", b"x") != event_id_for("a", b"y")


def test_avro_round_trip_and_pydantic_twin():
    data = encode_event(sample())
    assert decode_event(data) == sample()
    model = ClinicalEvent.from_bytes(data)
    assert model.patient.identifiers[0].value == "1"
    assert decode_event(model.to_bytes()) == sample()


def test_garbage_and_invalid_records_raise_envelope_error():
    with pytest.raises(EnvelopeError):
        decode_event(b"\x00\xff garbage")
    bad = sample()
    del bad["received_at"]
    with pytest.raises(EnvelopeError):
        encode_event(bad)


def test_fingerprint_is_stable_sha256():
    assert len(schema_fingerprint()) == 64 and schema_fingerprint() == schema_fingerprint()
