from __future__ import annotations

import copy

import orjson
import pytest

from streams.route import Delivered, Denied, RoutePolicyError, compile_destination
from tests.unit.route.conftest import ENCOUNTER, OBSERVATION, PATIENT, make_event
from topology.model import DestinationSpec, load_topology


def plan(**kw):
    return compile_destination(DestinationSpec(name="d", **kw))


def test_event_type_filter(adt_event, oru_event):
    p = plan(event_types=["ADT^*"], allow=["Patient.gender"])
    assert isinstance(p.apply(adt_event), Delivered)
    assert p.apply(oru_event) == Denied("event-type")
    exact = plan(event_types=["ORU^R01", "ADT^A0?"], allow=["Patient.gender"])
    assert isinstance(exact.apply(oru_event), Delivered)
    assert isinstance(exact.apply(adt_event), Delivered)
    assert exact.apply(make_event([PATIENT], event_type="ADT^A11")) == Denied("event-type")


def test_leaf_and_subtree_paths(adt_event):
    before = copy.deepcopy(adt_event)
    d = plan(allow=["Patient.name.family", "Patient.gender", "Encounter.period", "Encounter.class"]).apply(adt_event)
    assert isinstance(d, Delivered)
    pat, enc = d.event["resources"]
    assert pat == {"resourceType": "Patient", "name": [{"family": "Doe"}], "gender": "female"}
    assert enc == {"resourceType": "Encounter", "period": ENCOUNTER["period"], "class": ENCOUNTER["class"]}
    assert d.elements == ["Patient.name.family", "Patient.gender", "Encounter.class", "Encounter.period"]
    assert adt_event == before  # never mutates the input

    whole = plan(allow=["Patient.name", "Patient.name.family"]).apply(adt_event)
    assert whole.event["resources"][0]["name"] == PATIENT["name"]


def test_primitive_extension_travels_with_its_element(adt_event):
    d = plan(allow=["Patient.birthDate"]).apply(adt_event)
    assert d.event["resources"][0]["_birthDate"] == PATIENT["_birthDate"]
    assert d.elements == ["Patient.birthDate"]


def test_choice_types(oru_event):
    d = plan(allow=["Observation.value[x]", "Observation.code"]).apply(oru_event)
    obs = d.event["resources"][0]
    assert obs["valueQuantity"] == {"value": 7.2, "unit": "g/dL"}
    assert "Observation.valueQuantity" in d.elements
    string_obs = {**OBSERVATION, "valueString": "positive"}
    del string_obs["valueQuantity"]
    d2 = plan(allow=["Observation.value[x]"]).apply(make_event([string_obs], "ORU^R01"))
    assert d2.event["resources"][0] == {"resourceType": "Observation", "valueString": "positive"}
    concrete = plan(allow=["Observation.valueQuantity.value"]).apply(oru_event)
    assert concrete.event["resources"][0] == {"resourceType": "Observation", "valueQuantity": {"value": 7.2}}


def test_default_deny_and_unknown_types(adt_event):
    assert plan(allow=["Observation.status"]).apply(adt_event) == Denied("nothing-allowed")
    assert plan(allow=[]).apply(adt_event) == Denied("nothing-allowed")
    weird = make_event([{"resourceType": "Spaceship", "name": "x"}, {"noType": 1}])
    assert plan(allow=["Patient.name"]).apply(weird) == Denied("nothing-allowed")


def test_envelope_shape(adt_event):
    d = plan(allow=["Patient.gender"], purpose="HPAYMT").apply(adt_event)
    e = d.event
    assert e["destination"] == "d" and e["purpose"] == "HPAYMT"
    assert e["patient"] == {"euid": "E-1", "identifiers": []}  # Patient.identifier not allowed
    assert set(e) == {
        "event_id",
        "event_type",
        "source",
        "source_message_id",
        "patient",
        "occurred_at",
        "received_at",
        "resources",
        "destination",
        "purpose",
        "lineage",
    }
    with_ids = plan(allow=["Patient.identifier"]).apply(adt_event)
    assert with_ids.event["patient"]["identifiers"][0]["value"] == "MRN12345"


def test_avro_roundtrip_of_projected_event(adt_event):
    from schemas.envelope import decode_event, encode_event

    d = plan(allow=["Patient.name", "Encounter.period"]).apply(adt_event)
    assert decode_event(encode_event(d.event))["resources"] == d.event["resources"]


@pytest.mark.parametrize("bad", ["Patient", "Spaceship.name", "Patient.Name", "Patient.value[x].code", "Patient.na-me"])
def test_bad_paths_fail_compile(bad):
    with pytest.raises(RoutePolicyError):
        plan(allow=[bad])


def test_demo_topology_compiles(tmp_path):
    from pathlib import Path

    topo = load_topology(Path(__file__).parents[3] / "topology/examples/demo.yaml")
    for dest in topo.destinations:
        p = compile_destination(dest, keys={"RESEARCH_PSEUDONYM_KEY": b"k" * 32})
        out = p.apply(make_event([PATIENT, ENCOUNTER, OBSERVATION]))
        if isinstance(out, Delivered):
            orjson.dumps(out.event)


def test_load_keys_and_stage_import(monkeypatch):
    from pathlib import Path

    from streams.route.plan import load_keys

    topo = load_topology(Path(__file__).parents[3] / "topology/examples/workflows.yaml")
    monkeypatch.delenv("ANALYTICS_PSEUDONYM_KEY", raising=False)
    assert load_keys(topo) == {}
    with pytest.raises(RoutePolicyError, match="ANALYTICS_PSEUDONYM_KEY"):
        compile_destination(topo.destination("quality-analytics"), keys=load_keys(topo))
    monkeypatch.setenv("ANALYTICS_PSEUDONYM_KEY", "k" * 32)
    assert load_keys(topo) == {"ANALYTICS_PSEUDONYM_KEY": b"k" * 32}
    compile_destination(topo.destination("quality-analytics"), keys=load_keys(topo))
    import streams.route.stage  # noqa: F401  (the route agent shell imports load_keys from plan)


def test_consent_may_be_passed_serialised(adt_event):
    from streams.route import ConsentState

    state = ConsentState.from_consents(
        [{"resourceType": "Consent", "id": "c", "status": "active", "provision": {"type": "deny"}}]
    )
    p = plan(allow=["Patient.gender"])
    assert p.apply(adt_event, state.to_json()) == Denied("consent-denied")
    assert p.apply(adt_event, state.to_dict()) == Denied("consent-denied")
