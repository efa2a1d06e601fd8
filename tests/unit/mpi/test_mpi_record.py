from __future__ import annotations

from streams.identity import normalize
from streams.identity.record import SSN_SYSTEM, Identifier, PatientRecord, from_fhir_patient, to_fhir_patient

PATIENT = {
    "resourceType": "Patient",
    "id": "p-1",
    "identifier": [
        {
            "system": "urn:oid:2.16.840.1.113883.19.5",
            "value": "MRN-77",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
        },
        {"system": SSN_SYSTEM, "value": "123-45-6788"},
        {"value": "M-555", "type": {"coding": [{"code": "MB"}]}},
    ],
    "name": [
        {"use": "old", "family": "Jones", "given": ["Mary"]},
        {"use": "official", "family": "O'Brien", "given": ["Mary", "Ann"]},
    ],
    "gender": "female",
    "birthDate": "1975-02-28",
    "address": [
        {
            "use": "home",
            "line": ["22 Elm St", "Apt 4"],
            "city": "Boston",
            "state": "MA",
            "postalCode": "02118-1234",
        }
    ],
    "telecom": [{"system": "email", "value": "m@example.org"}, {"system": "phone", "value": "617-555-0101"}],
}


def test_from_fhir_patient_maps_demographics_and_identifiers() -> None:
    rec = from_fhir_patient(PATIENT, "ehr-a")
    assert rec.record_id == "p-1"
    assert rec.source == "ehr-a"
    assert rec.family == "O'Brien" and rec.given == "Mary"
    assert rec.birth_date == "1975-02-28" and rec.sex == "female"
    assert rec.address_line == "22 Elm St" and rec.address_line2 == "Apt 4"
    assert rec.city == "Boston" and rec.postal_code == "02118-1234"
    assert rec.phone == "617-555-0101"
    assert rec.ssn == "123456788" and rec.ssn_last4 == "6788"
    assert Identifier("urn:oid:2.16.840.1.113883.19.5", "MRN-77", "MR") in rec.identifiers
    # An identifier without a system is scoped to its source, never global.
    assert Identifier("urn:clinstream:source:ehr-a", "M-555", "MB") in rec.identifiers
    assert all(i.type != "SS" for i in rec.identifiers)


def test_ssn_recognised_by_type_code() -> None:
    ident = {"system": "urn:other", "value": "987654321", "type": {"coding": [{"code": "SS"}]}}
    res = {"resourceType": "Patient", "id": "x", "identifier": [ident]}
    rec = from_fhir_patient(res, "s")
    assert rec.ssn == "987654321" and rec.identifiers == ()


def test_round_trip_through_fhir() -> None:
    rec = from_fhir_patient(PATIENT, "ehr-a")
    again = from_fhir_patient(to_fhir_patient(rec), "ehr-a")
    assert again == rec


def test_rejects_other_resource_types() -> None:
    import pytest

    with pytest.raises(ValueError):
        from_fhir_patient({"resourceType": "Observation"}, "s")


def test_normalisers() -> None:
    assert normalize.name(" O'Brien-Smith ") == "obriensmith"
    assert normalize.name("José") == "jose"
    assert normalize.canonical_given("bob") == "robert"
    assert normalize.birth_date("1975-02-28") == "19750228"
    assert normalize.birth_date("19750228") == "19750228"
    assert normalize.birth_date("1975-02") == "19750200"
    assert normalize.birth_date("garbage") == ""
    assert normalize.phone("+1 (617) 555-0101") == "6175550101"
    assert normalize.postcode("02118-1234") == "02118"
    assert normalize.postcode("sw1a 1aa") == "SW1A1AA"
    assert normalize.ssn("000-00-0000") == ""
    assert normalize.sex("FEMALE") == "f" and normalize.sex("unknown") == ""
    assert normalize.split_address_line("22 elm st") == ("22", "elm st")
    assert normalize.split_address_line("elm st") == ("", "elm st")


def test_effective_ssn_last4() -> None:
    assert PatientRecord("r", "s", ssn="123456788").effective_ssn_last4 == "6788"
    assert PatientRecord("r", "s", ssn_last4="x1234").effective_ssn_last4 == "1234"
    assert PatientRecord("r", "s").effective_ssn_last4 == ""
