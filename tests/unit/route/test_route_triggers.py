from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from streams.route.errors import TriggerError
from streams.route.triggers import compile_condition, compile_triggers, parse_duration
from tests.unit.route.conftest import ENCOUNTER, OBSERVATION, PATIENT, make_event
from topology.model import TriggerSpec, load_topology

EXAMPLES = Path(__file__).parents[3] / "topology/examples"


def workflows():
    return compile_triggers(load_topology(EXAMPLES / "workflows.yaml").triggers)


def abnormal(code="H"):
    return {**OBSERVATION, "interpretation": [{"coding": [{"code": code}]}]}


def test_abnormal_lab_creates_review_task():
    fired = workflows().evaluate(make_event([PATIENT, abnormal("HH")], "ORU^R01"))
    assert [f.queue for f in fired] == ["clinician-review"]
    t = fired[0].task
    assert fired[0].topic == "tasks.clinician-review" and fired[0].key == "E-1"
    assert t["status"] == "requested" and t["intent"] == "order" and t["priority"] == "urgent"
    assert t["code"]["coding"][0]["code"] == "review-result"
    assert t["for"]["reference"] == "Patient/E-1"
    assert t["focus"] == {"reference": "Observation/obs-1"}
    assert t["executionPeriod"] == {"start": "2024-03-05T10:15:00Z", "end": "2024-03-05T14:15:00Z"}
    assert t["restriction"]["period"]["end"] == "2024-03-05T14:15:00Z"
    again = workflows().evaluate(make_event([PATIENT, abnormal("HH")], "ORU^R01"))
    assert again[0].task["id"] == t["id"]  # deterministic: replay-safe
    from fhir.resources.R4B.task import Task

    Task.model_validate(t)


def test_normal_lab_and_wrong_event_type_do_not_fire():
    assert workflows().evaluate(make_event([PATIENT, abnormal("N")], "ORU^R01")) == []
    assert workflows().evaluate(make_event([PATIENT, abnormal("H")], "ADT^A08")) == []


def test_discharge_creates_two_tasks():
    enc = {**ENCOUNTER, "status": "finished"}
    fired = workflows().evaluate(make_event([PATIENT, enc], "ADT^A03"))
    assert sorted(f.queue for f in fired) == ["outreach", "pharmacy"]
    assert len({f.task["id"] for f in fired}) == 2
    follow = next(f for f in fired if f.queue == "outreach").task
    assert follow["executionPeriod"]["end"] == "2024-03-07T10:15:00Z"
    assert workflows().evaluate(make_event([PATIENT, ENCOUNTER], "ADT^A03")) == []  # still in progress


def test_prior_auth_cleared():
    cr = {
        "resourceType": "ClaimResponse",
        "id": "cr-9",
        "status": "active",
        "use": "preauthorization",
        "outcome": "complete",
        "preAuthRef": "PA-1",
    }
    fired = workflows().evaluate(make_event([cr], "FHIR^ClaimResponse"))
    assert [f.queue for f in fired] == ["scheduling"]
    assert fired[0].task["focus"] == {"reference": "ClaimResponse/cr-9"}
    assert workflows().evaluate(make_event([{**cr, "outcome": "error"}], "FHIR^ClaimResponse")) == []


def test_condition_operators():
    obs = {**OBSERVATION, "valueQuantity": {"value": 12.5}}
    assert compile_condition("Observation.value[x] > 10").holds(obs)
    assert not compile_condition("Observation.value[x] <= 10").holds(obs)
    assert compile_condition("Observation.status != preliminary").holds(obs)
    assert compile_condition("Observation.code in ['718-7']").holds(obs)
    assert compile_condition("Observation.code not in [1-1]").holds(obs)
    assert compile_condition("Observation.note exists").holds(obs)
    assert not compile_condition("Observation.specimen exists").holds(obs)
    assert compile_condition("Coverage.status = active").holds({"resourceType": "Coverage", "status": "active"})


def test_match_any_and_all_on_same_resource():
    spec = TriggerSpec(
        name="t",
        queue="q",
        task_code="c",
        conditions=["Observation.interpretation in [H]", "Observation.status = final"],
    )
    ts = compile_triggers([spec])
    prelim_high = {**abnormal("H"), "status": "preliminary", "id": "o2"}
    final_normal = {**abnormal("N"), "id": "o3"}
    assert ts.evaluate(make_event([prelim_high, final_normal])) == []
    ts_any = compile_triggers([spec.model_copy(update={"match": "any"})])
    assert ts_any.evaluate(make_event([prelim_high]))[0].task["focus"] == {"reference": "Observation/o2"}


@pytest.mark.parametrize(
    "bad", ["Observation.status", "Spaceship.x = 1", "Observation.status in H", "x = 1", "Observation.value > high"]
)
def test_bad_conditions(bad):
    with pytest.raises(TriggerError):
        compile_condition(bad)


def test_durations():
    start = datetime(2024, 1, 31, 12, tzinfo=UTC)
    assert parse_duration("P1M")(start) == datetime(2024, 2, 29, 12, tzinfo=UTC)
    assert parse_duration("P1Y2DT3H")(start) == datetime(2025, 2, 2, 15, tzinfo=UTC)
    assert parse_duration("PT30M")(start) == datetime(2024, 1, 31, 12, 30, tzinfo=UTC)
    for bad in ("P", "1D", "PT", "P1.5D"):
        with pytest.raises(TriggerError):
            parse_duration(bad)


def test_duplicate_names_rejected():
    spec = TriggerSpec(name="t", queue="q", task_code="c")
    with pytest.raises(TriggerError):
        compile_triggers([spec, spec])
