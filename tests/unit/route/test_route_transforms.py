from __future__ import annotations

import pytest

from streams.route import Delivered, RoutePolicyError, compile_destination
from streams.route.transforms import low_population_zip3, zip3
from tests.unit.route.conftest import ENCOUNTER, KEYS, OBSERVATION, PATIENT, make_event
from topology.model import DestinationSpec, TransformSpec


def dest(transforms=(), **kw):
    return DestinationSpec(name="research", transforms=[TransformSpec(**t) for t in transforms], **kw)


def test_zip3_and_low_population_list():
    assert zip3("02139") == "021"
    assert zip3("02139-4307") == "021"
    assert zip3("03601") == "000"
    assert zip3("K1A 0B1") is None
    assert len(low_population_zip3()) == 17 and "893" in low_population_zip3()


def test_pseudonym_is_keyed_and_deterministic():
    d = dest(
        [{"kind": "pseudonym", "key_env": "RESEARCH_KEY", "paths": ["Patient.identifier"]}],
        allow=["Patient.identifier", "Patient.gender"],
    )
    p1 = compile_destination(d, keys=KEYS)
    p2 = compile_destination(d, keys=KEYS)
    p3 = compile_destination(d, keys={"RESEARCH_KEY": b"another-key-0123456789"})
    ev = make_event([PATIENT])
    v1 = p1.apply(ev).event["resources"][0]["identifier"][0]["value"]
    assert v1 == p2.apply(ev).event["resources"][0]["identifier"][0]["value"]
    assert v1 != p3.apply(ev).event["resources"][0]["identifier"][0]["value"]
    assert v1.startswith("ps-") and "MRN12345" not in v1
    assert p1.apply(ev).event["patient"]["identifiers"][0]["value"].startswith("ps-")


def test_missing_key_fails_compile(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(RoutePolicyError, match="NO_SUCH_KEY"):
        compile_destination(dest([{"kind": "pseudonym", "key_env": "NO_SUCH_KEY"}], allow=["Patient.gender"]))
    monkeypatch.setenv("NO_SUCH_KEY", "0123456789abcdef0123")
    compile_destination(dest([{"kind": "pseudonym", "key_env": "NO_SUCH_KEY"}], allow=["Patient.gender"]))


def test_date_shift_consistent_per_patient():
    from datetime import date

    d = dest(
        [{"kind": "date-shift", "key_env": "SHIFT_KEY", "max_shift_days": 20}],
        allow=["Patient.birthDate", "Encounter.period", "Observation.effective[x]"],
    )
    p = compile_destination(d, keys=KEYS)
    a = p.apply(make_event([PATIENT, ENCOUNTER, OBSERVATION], euid="E-1")).event
    b = p.apply(make_event([PATIENT], euid="E-1")).event
    c = p.apply(make_event([PATIENT], euid="E-2")).event
    shifted_birth = a["resources"][0]["birthDate"]
    delta = (date.fromisoformat(shifted_birth) - date.fromisoformat(PATIENT["birthDate"])).days
    assert 1 <= abs(delta) <= 20
    assert b["resources"][0]["birthDate"] == shifted_birth
    enc_start = a["resources"][1]["period"]["start"]
    assert (date.fromisoformat(enc_start[:10]) - date(2024, 3, 5)).days == delta
    assert enc_start.endswith("T10:15:00Z")
    assert (date.fromisoformat(a["occurred_at"][:10]) - date(2024, 3, 5)).days == delta
    other = (date.fromisoformat(c["resources"][0]["birthDate"]) - date.fromisoformat(PATIENT["birthDate"])).days
    assert 1 <= abs(other) <= 20  # another patient: its own offset, same bounds


def test_date_year_zip3_age_cap_drop_text():
    old = {**PATIENT, "birthDate": "1920-01-02"}
    d = dest(
        [
            {"kind": "date-year", "paths": ["Encounter.period"]},
            {"kind": "zip3"},
            {"kind": "age-cap"},
            {"kind": "drop-text"},
        ],
        allow=[
            "Patient.birthDate",
            "Patient.address",
            "Patient.text",
            "Encounter.period",
            "Observation.note",
            "Observation.value[x]",
            "Observation.status",
        ],
    )
    p = compile_destination(d)
    out = p.apply(make_event([old, ENCOUNTER, {**OBSERVATION, "valueString": "free text"}])).event["resources"]
    pat, enc, obs = out
    assert pat["birthDate"] == "1934"  # 2024 - 90: the "90 or older" category
    assert pat["address"][0]["postalCode"] == "021" and pat["address"][0]["city"] == "Boston"
    assert "text" not in pat
    assert enc["period"] == {"start": "2024"}
    assert obs == {"resourceType": "Observation", "status": "final", "valueQuantity": {"value": 7.2, "unit": "g/dL"}}
    young = p.apply(make_event([PATIENT])).event["resources"][0]
    assert young["birthDate"] == "1980-07-14"


def test_safe_harbor_rejects_date_shift():
    with pytest.raises(RoutePolicyError, match="Safe Harbor"):
        compile_destination(
            dest([{"kind": "date-shift", "key_env": "SHIFT_KEY"}], profile="safe-harbor", allow=["Patient.gender"]),
            keys=KEYS,
        )


def test_safe_harbor_basic_shape():
    d = dest(
        [{"kind": "pseudonym", "key_env": "RESEARCH_KEY"}],
        profile="safe-harbor",
        allow=[
            "Patient.id",
            "Patient.name",
            "Patient.birthDate",
            "Patient.address",
            "Patient.gender",
            "Patient.identifier",
            "Encounter.subject",
            "Encounter.period",
            "Encounter.status",
        ],
    )
    r = compile_destination(d, keys=KEYS).apply(make_event([PATIENT, ENCOUNTER]))
    assert isinstance(r, Delivered)
    pat, enc = r.event["resources"]
    assert pat["birthDate"] == "1980"
    assert pat["address"] == [{"state": "MA", "postalCode": "021"}]
    assert "name" not in pat and "identifier" not in pat
    assert pat["id"].startswith("ps-")
    assert enc["subject"] == {"reference": f"Patient/{pat['id']}"}  # links survive pseudonymisation
    assert enc["period"] == {"start": "2024"}
    assert r.event["patient"]["euid"].startswith("ps-") and r.event["patient"]["identifiers"] == []
    assert r.event["occurred_at"] == "2024" and r.event["source_message_id"] is None
    assert "Patient.name" not in r.elements and "Patient.birthDate" in r.elements
