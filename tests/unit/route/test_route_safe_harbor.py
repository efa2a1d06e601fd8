"""Safe Harbor: PHI injected into every identifier category (45 CFR 164.514(b)(2)) never survives."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streams.route import Delivered, compile_destination
from tests.unit.route.conftest import KEYS, make_event
from topology.model import DestinationSpec, TransformSpec

PHI = {
    "name": "Zebediah",
    "family": "Quackenbush",
    "relative": "Philomena",
    "street": "42 Elmwood Terrace",
    "city": "Springfieldia",
    "county": "Middlesexia",
    "zip_tail": "0213987",
    "birth": "1931-06-15",
    "admit": "2024-02-29",
    "phone": "617-555-0199",
    "fax": "617-555-0142",
    "email": "zeb@quack.example",
    "ssn": "123-45-6789",
    "mrn": "MRN-778899",
    "plan": "HP-44332211",
    "account": "ACCT-5566",
    "license": "DL-99887766",
    "vin": "1HGCM82633A004352",
    "serial": "SN-DEV-31415",
    "url": "https://zeb.example/me",
    "ip": "192.168.13.77",
    "biometric": "FP-HASH-0xBEEF",
    "photo": "UEhJUEhPVE8=",
    "other": "BADGE-24680",
    "note": "husband Bartholomew called",
    "obs_text": "lives alone near mill",
    "ext": "born in Springfieldia",
    "display": "Dr Cornelius Fudge",
    "numeric": 987654321,
}


def phi_resources() -> list[dict[str, Any]]:
    p = PHI
    patient = {
        "resourceType": "Patient",
        "id": p["mrn"],
        "text": {"status": "generated", "div": f"<div>{p['name']} {p['family']}</div>"},
        "identifier": [
            {"system": "http://hl7.org/fhir/sid/us-ssn", "value": p["ssn"]},
            {"system": "urn:mrn", "value": p["mrn"], "assigner": {"display": p["display"]}},
            {"system": "urn:plan", "value": p["plan"]},
            {"system": "urn:license", "value": p["license"]},
            {"system": "urn:badge", "value": p["other"]},
        ],
        "name": [{"family": p["family"], "given": [p["name"]], "text": f"{p['name']} {p['family']}"}],
        "telecom": [
            {"system": "phone", "value": p["phone"]},
            {"system": "fax", "value": p["fax"]},
            {"system": "email", "value": p["email"]},
            {"system": "url", "value": p["url"]},
        ],
        "gender": "male",
        "birthDate": p["birth"],
        "_birthDate": {"extension": [{"url": "http://x/birthTime", "valueDateTime": p["birth"] + "T04:00:00Z"}]},
        "address": [
            {
                "line": [p["street"]],
                "city": p["city"],
                "district": p["county"],
                "state": "MA",
                "postalCode": p["zip_tail"][:5],
                "text": f"{p['street']}, {p['city']}",
            }
        ],
        "photo": [{"contentType": "image/png", "data": p["photo"]}],
        "contact": [{"name": {"given": [p["relative"]]}, "telecom": [{"value": p["phone"]}]}],
        "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace", "valueAddress": {"city": p["city"]}},
            {
                "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
                "valueCodeableConcept": {"coding": [{"code": "2106-3", "display": "White"}], "text": p["ext"]},
            },
            {"url": "http://example.org/biometric", "valueString": p["biometric"]},
            {"url": "http://example.org/ip", "valueString": p["ip"]},
        ],
        "multipleBirthInteger": p["numeric"],
        "generalPractitioner": [{"reference": "Practitioner/doc-1", "display": p["display"]}],
    }
    encounter = {
        "resourceType": "Encounter",
        "id": "enc-" + p["account"],
        "status": "finished",
        "identifier": [{"value": p["account"]}],
        "period": {"start": p["admit"] + "T08:00:00-05:00", "end": p["admit"]},
        "subject": {"reference": f"Patient/{p['mrn']}", "display": p["name"]},
        "location": [{"location": {"display": p["street"]}}],
    }
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "valueString": p["obs_text"],
        "note": [{"text": p["note"], "authorString": p["display"]}],
        "comment": p["note"],
        "effectiveDateTime": p["admit"] + "T09:00:00Z",
        "device": {"identifier": {"value": p["serial"]}, "display": p["serial"]},
        "subject": {"reference": f"Patient/{p['mrn']}"},
    }
    device = {
        "resourceType": "Device",
        "serialNumber": p["serial"],
        "udiCarrier": [{"carrierHRF": p["vin"]}],
        "url": p["url"],
        "identifier": [{"value": p["vin"]}],
        "status": "active",
    }
    return [patient, encounter, observation, device]


def _allow_everything(resources: list[dict[str, Any]]) -> list[str]:
    return sorted({f"{r['resourceType']}.{k.lstrip('_')}" for r in resources for k in r if k != "resourceType"})


@pytest.mark.parametrize("with_key", [True, False])
def test_no_injected_identifier_survives(with_key: bool) -> None:
    res = phi_resources()
    transforms = [TransformSpec(kind="pseudonym", key_env="RESEARCH_KEY")] if with_key else []
    dest = DestinationSpec(
        name="research",
        purpose="HRESCH",
        profile="safe-harbor",
        transforms=transforms,
        allow=_allow_everything(res),
        allow_extensions=[
            "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
            "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
            "http://example.org/ip",
        ],
    )
    event = make_event(res, euid="E-" + PHI["mrn"])
    event["patient"]["identifiers"] = [{"system": "ssn", "value": PHI["ssn"], "type": "SS"}]
    event["occurred_at"] = PHI["admit"] + "T08:00:00Z"
    event["source_message_id"] = PHI["account"]
    out = compile_destination(dest, keys=KEYS).apply(event)
    assert isinstance(out, Delivered)
    blob = orjson.dumps(out.event).decode()
    leaks = [k for k, v in PHI.items() if str(v) in blob]
    leaks += [k for k, v in PHI.items() if isinstance(v, str) and v[:10] in blob and k in ("birth", "admit")]
    assert leaks == [], blob
    assert "1931" not in blob  # born 1931, 92 at the event: the birth year itself would reveal age > 89
    assert "2024" in blob  # years of other dates are allowed
    pat = out.event["resources"][0]
    assert pat["birthDate"] == "1934"
    assert pat["address"] == [{"state": "MA", "postalCode": "021"}]
    assert pat["extension"] == [
        {
            "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
            "valueCodeableConcept": {"coding": [{"code": "2106-3", "display": "White"}]},
        }
    ]
    assert "telecom" not in pat and "photo" not in pat and "contact" not in pat
    audit_blob = orjson.dumps(out.disclosure).decode()
    assert PHI["ssn"] not in audit_blob and PHI["name"] not in audit_blob
