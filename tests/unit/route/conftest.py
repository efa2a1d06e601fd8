"""Shared builders for route-stage tests: realistic envelopes around FHIR resources."""

from __future__ import annotations

from typing import Any

import pytest

KEY = b"test-key-0123456789abcdef"
KEYS = {"RESEARCH_KEY": KEY, "SHIFT_KEY": b"shift-key-0123456789abcdef"}


def make_event(resources: list[dict[str, Any]], event_type: str = "ADT^A01", euid: str = "E-1") -> dict[str, Any]:
    return {
        "event_id": "11111111-2222-3333-4444-555555555555",
        "event_type": event_type,
        "source": "adt-feed",
        "source_message_id": "MSG0001",
        "patient": {"euid": euid, "identifiers": [{"system": "urn:mrn:hosp", "value": "MRN12345", "type": "MR"}]},
        "occurred_at": "2024-03-05T10:15:00Z",
        "received_at": "2024-03-05T10:15:02.123Z",
        "resources": resources,
        "destination": None,
        "purpose": None,
        "lineage": {"topic": "identified.events", "partition": 0, "offset": 7, "stages": ["normalize"]},
    }


PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "pat-1",
    "meta": {"lastUpdated": "2024-03-05T10:00:00Z"},
    "text": {"status": "generated", "div": "<div>Jane Doe</div>"},
    "identifier": [{"system": "urn:mrn:hosp", "value": "MRN12345"}],
    "name": [{"family": "Doe", "given": ["Jane", "Q"], "text": "Jane Q Doe"}],
    "telecom": [{"system": "phone", "value": "555-0100"}],
    "gender": "female",
    "birthDate": "1980-07-14",
    "_birthDate": {"extension": [{"url": "http://example.org/time", "valueDateTime": "1980-07-14T03:00:00Z"}]},
    "address": [{"line": ["1 Main St"], "city": "Boston", "state": "MA", "postalCode": "02139"}],
}
ENCOUNTER: dict[str, Any] = {
    "resourceType": "Encounter",
    "id": "enc-1",
    "status": "in-progress",
    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
    "identifier": [{"value": "V100"}],
    "period": {"start": "2024-03-05T10:15:00Z"},
    "subject": {"reference": "Patient/pat-1", "display": "Jane Doe"},
}
OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "obs-1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "718-7", "display": "Hemoglobin"}]},
    "subject": {"reference": "Patient/pat-1"},
    "effectiveDateTime": "2024-03-05T09:00:00Z",
    "valueQuantity": {"value": 7.2, "unit": "g/dL"},
    "interpretation": [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "L"}]}
    ],
    "note": [{"text": "Patient Jane called about results"}],
}


@pytest.fixture
def adt_event() -> dict[str, Any]:
    return make_event([PATIENT, ENCOUNTER])


@pytest.fixture
def oru_event() -> dict[str, Any]:
    return make_event([PATIENT, OBSERVATION], event_type="ORU^R01")
