from __future__ import annotations

import argparse
import io
from datetime import UTC, datetime

import orjson
import pytest

from streams.route import ConsentError, ConsentState, Delivered, Denied, compile_destination, evaluate
from streams.route.audit import add_audit_parser, audit_disclosures_command, disclosures_for
from tests.unit.route.conftest import ENCOUNTER, OBSERVATION, PATIENT, make_event
from topology.model import DestinationSpec

AT = datetime(2024, 6, 1, tzinfo=UTC)


def consent(provision, status="active", cid="c1", scope="patient-privacy", updated="2024-01-01T00:00:00Z"):
    return {
        "resourceType": "Consent",
        "id": cid,
        "status": status,
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": scope}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "Patient/pat-1"},
        "dateTime": updated,
        "provision": provision,
    }


def ev(state, purpose="TREAT", dest="billing", org=None, types=("Patient",), default="permit", at=AT):
    return evaluate(
        state, purpose=purpose, destination=dest, organization=org, resource_types=types, at=at, default=default
    )


def test_default_without_consent():
    assert ev(None).permitted and ev(None).reason == "no-consent-default-permit"
    d = ev(None, default="deny")
    assert not d.permitted and d.reason == "no-consent-default-deny"


def test_permit_and_deny_provisions_with_purpose():
    s = ConsentState.from_consents(
        [
            consent(
                {
                    "type": "permit",
                    "provision": [
                        {
                            "type": "deny",
                            "purpose": [
                                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HMARKT"}
                            ],
                        }
                    ],
                }
            )
        ]
    )
    assert ev(s, purpose="TREAT").permitted
    assert ev(s, purpose="ETREAT").permitted
    d = ev(s, purpose="HMARKT")
    assert not d.permitted and d.reason == "consent-denied"


def test_period_bounds():
    s = ConsentState.from_consents([consent({"type": "deny", "period": {"start": "2024-01-01", "end": "2024-03-31"}})])
    assert not ev(s, at=datetime(2024, 3, 31, 23, 0, tzinfo=UTC)).permitted
    # outside the period the consent says nothing: the destination default applies
    assert ev(s, at=datetime(2024, 4, 1, 1, tzinfo=UTC)).permitted
    assert not ev(s, at=datetime(2024, 4, 1, 1, tzinfo=UTC), default="deny").permitted


def test_actor_matches_destination_org_or_name():
    s = ConsentState.from_consents(
        [
            consent(
                {
                    "type": "permit",
                    "provision": [
                        {
                            "type": "deny",
                            "actor": [
                                {
                                    "role": {"coding": [{"code": "IRCP"}]},
                                    "reference": {"reference": "Organization/acme-billing"},
                                }
                            ],
                        }
                    ],
                }
            )
        ]
    )
    assert not ev(s, dest="billing", org="Organization/acme-billing").permitted
    assert ev(s, dest="billing", org="Organization/other").permitted
    by_name = ConsentState.from_consents(
        [consent({"type": "deny", "actor": [{"reference": {"identifier": {"value": "research"}}}]})]
    )
    assert not ev(by_name, dest="research").permitted
    assert ev(by_name, dest="ehr").permitted


def test_class_denial_drops_only_those_types():
    s = ConsentState.from_consents(
        [
            consent(
                {
                    "type": "permit",
                    "provision": [
                        {
                            "type": "deny",
                            "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}],
                        }
                    ],
                }
            )
        ]
    )
    d = ev(s, types=("Patient", "Observation"))
    assert d.permitted and d.denied_types == {"Observation"}
    assert not ev(s, types=("Observation",)).permitted
    plan = compile_destination(DestinationSpec(name="ehr", allow=["Patient.gender", "Observation.status"]))
    out = plan.apply(make_event([PATIENT, OBSERVATION], "ORU^R01"), s)
    assert isinstance(out, Delivered)
    assert [r["resourceType"] for r in out.event["resources"]] == ["Patient"]
    assert plan.apply(make_event([OBSERVATION], "ORU^R01"), s) == Denied("consent-denied")


def test_nested_exception_to_exception():
    s = ConsentState.from_consents(
        [
            consent(
                {
                    "type": "deny",
                    "provision": [
                        {
                            "type": "permit",
                            "purpose": [{"code": "TREAT"}],
                            "provision": [{"type": "deny", "actor": [{"reference": {"reference": "Organization/x"}}]}],
                        }
                    ],
                }
            )
        ]
    )
    assert ev(s, purpose="TREAT").permitted
    assert not ev(s, purpose="TREAT", org="Organization/x").permitted
    assert not ev(s, purpose="HPAYMT").permitted


def test_latest_version_wins_and_revocation():
    on = consent({"type": "deny"}, updated="2024-01-01T00:00:00Z")
    off = consent({"type": "deny"}, status="inactive", updated="2024-02-01T00:00:00Z")
    assert not ev(ConsentState.from_consents([on])).permitted
    assert ev(ConsentState.from_consents([on, off])).permitted
    assert ev(ConsentState.from_consents([off, on])).permitted  # an older version arriving late does not win
    rejected = ConsentState.from_consents([consent({"type": "deny"}, status="rejected")])
    assert ev(rejected).permitted


def test_scope_limits_purposes_and_deny_overrides():
    research_optout = consent({"type": "deny"}, cid="r", scope="research")
    permit_all = consent({"type": "permit"}, cid="p")
    s = ConsentState.from_consents([research_optout, permit_all])
    assert not ev(s, purpose="HRESCH").permitted
    assert ev(s, purpose="TREAT").permitted


def test_json_roundtrip_and_errors():
    s = ConsentState.from_consents(
        [
            consent(
                {
                    "type": "permit",
                    "period": {"start": "2024-01-01"},
                    "provision": [
                        {"type": "deny", "purpose": [{"code": "HMARKT"}], "class": [{"code": "Observation"}]}
                    ],
                }
            )
        ]
    )
    again = ConsentState.from_json(s.to_json())
    assert again == s and orjson.loads(s.to_json())["patient"] == "Patient/pat-1"
    with pytest.raises(ConsentError):
        ConsentState.from_json("{not json")
    with pytest.raises(ConsentError):
        ConsentState().with_consent({"resourceType": "Consent", "status": "active", "provision": {"type": "maybe"}})
    with pytest.raises(ConsentError):
        ConsentState().with_consent({"resourceType": "Patient"})


def test_plan_consent_reasons():
    plan = compile_destination(
        DestinationSpec(name="mkt", purpose="HMARKT", consent_default="deny", allow=["Patient.gender"])
    )
    assert plan.apply(make_event([PATIENT])) == Denied("no-consent-default-deny")
    s = ConsentState.from_consents([consent({"type": "permit"})])
    assert isinstance(plan.apply(make_event([PATIENT]), s), Delivered)


def _disclosure():
    plan = compile_destination(
        DestinationSpec(
            name="billing",
            purpose="HPAYMT",
            organization="Organization/acme",
            allow=["Patient.name.family", "Encounter.period"],
        )
    )
    return plan.apply(make_event([PATIENT, ENCOUNTER]), recorded="2024-03-05T10:15:03Z")


def test_audit_event_shape_validates():
    d = _disclosure()
    a = d.disclosure
    assert a["type"]["code"] == "110106" and a["subtype"][0]["code"] == "disclose"
    assert a["purposeOfEvent"][0]["coding"][0]["code"] == "HPAYMT"
    assert a["entity"][0]["what"]["identifier"]["value"] == "E-1"
    assert a["entity"][1]["detail"][0]["valueString"] == "Patient.name.family Encounter.period"
    assert a["id"] == _disclosure().disclosure["id"]  # deterministic: replays dedupe
    from fhir.resources.R4B.auditevent import AuditEvent

    AuditEvent.model_validate(a)


def test_disclosures_for_and_cli():
    a = _disclosure().disclosure
    other = {
        **a,
        "id": "x",
        "entity": [{**a["entity"][0], "what": {"identifier": {"system": "urn:clinstream:euid", "value": "E-2"}}}],
    }
    late = {
        **a,
        "recorded": "2024-05-01T00:00:00Z",
        "entity": [
            a["entity"][0],
            {**a["entity"][1], "what": {"identifier": {"system": "urn:clinstream:event-id", "value": "ev-2"}}},
        ],
    }
    records = [late, a, other, a, {"resourceType": "Patient"}]
    rows = disclosures_for(records, "E-1")
    assert [r.event_id for r in rows] == [a["entity"][1]["what"]["identifier"]["value"], "ev-2"]
    assert rows[0].destination == "billing" and rows[0].purpose == "HPAYMT"
    assert [r.event_id for r in disclosures_for(records, "E-1", datetime(2024, 4, 1))] == ["ev-2"]

    parser = argparse.ArgumentParser()
    add_audit_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["audit", "disclosures", "--patient", "E-1", "--json"])
    buf = io.StringIO()
    assert args.handler(args, lambda: records, out=buf) == 0
    assert len(orjson.loads(buf.getvalue())) == 2
    buf = io.StringIO()
    args = parser.parse_args(["audit", "disclosures", "--patient", "E-1", "--since", "2024-04-01"])
    assert audit_disclosures_command(args, lambda: records, out=buf) == 0
    assert "ev-2" in buf.getvalue() and "billing" in buf.getvalue()
    args = parser.parse_args(["audit", "disclosures", "--patient", "E-1", "--since", "yesterday"])
    assert audit_disclosures_command(args, lambda: records, out=io.StringIO()) == 2


def test_update_from_event_then_route():
    from streams.route.consent import update_from_event

    assert update_from_event(None, make_event([PATIENT])) is None
    state = update_from_event(None, make_event([consent({"type": "deny"})], "FHIR^Consent", euid="E-9"))
    assert state is not None and state.patient == "E-9"
    stored = state.to_json()  # what the route agent keeps per EUID (Faust table / consent.decisions)
    plan = compile_destination(DestinationSpec(name="ehr", allow=["Patient.gender"]))
    assert plan.apply(make_event([PATIENT], euid="E-9"), ConsentState.from_json(stored)) == Denied("consent-denied")
    revoked = update_from_event(
        ConsentState.from_json(stored),
        make_event([consent({"type": "deny"}, status="inactive", updated="2025-01-01")], "FHIR^Consent"),
    )
    assert isinstance(plan.apply(make_event([PATIENT], euid="E-9"), revoked), Delivered)
