"""``clinstream bench route [--json]``: route-stage throughput on one core, no Kafka.

Five destinations with different purposes (treatment replica, billing, lab portal, outreach CRM
with transforms and opt-in consent, Safe Harbor research with keyed pseudonyms) applied to
realistic events: the FHIR Bundles of the HL7 v2-to-FHIR samples when present
(``--samples``), otherwise built-in Patient + Encounter + Observation events. One routed event
= that event offered to all five destinations (each yields Delivered with its AuditEvent, or
Denied). Consent states are evaluated for half of the patients. Rates are per CPU-second of the
benchmark process (= one core), so a busy machine does not distort them; ``wall_events_per_s`` is
the wall-clock rate.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from streams.route.consent import ConsentState
from streams.route.plan import Delivered, DestinationPlan, compile_destination
from streams.route.preview import fhir_to_event
from topology.model import DestinationSpec, TransformSpec

DEFAULT_SAMPLES = Path("/work/shared/data/hl7v2-samples/expected-fhir")
_BENCH_KEYS = {"BENCH_PSEUDONYM_KEY": b"bench-only-key-0123456789abcdef"}


def bench_destinations() -> list[DestinationSpec]:
    return [
        DestinationSpec(
            name="ehr-replica",
            purpose="TREAT",
            event_types=["ADT^*", "ORU^*"],
            allow=[
                "Patient.identifier",
                "Patient.name",
                "Patient.birthDate",
                "Patient.gender",
                "Patient.address",
                "Patient.telecom",
                "Encounter.identifier",
                "Encounter.status",
                "Encounter.class",
                "Encounter.period",
                "Encounter.location",
                "Encounter.subject",
                "Observation.status",
                "Observation.code",
                "Observation.value[x]",
                "Observation.interpretation",
                "Observation.effective[x]",
                "Observation.subject",
            ],
        ),
        DestinationSpec(
            name="billing",
            purpose="HPAYMT",
            event_types=["ADT^A01", "ADT^A03", "ADT^A04", "ADT^A08"],
            allow=[
                "Patient.identifier",
                "Patient.name.family",
                "Patient.name.given",
                "Patient.birthDate",
                "Encounter.identifier",
                "Encounter.class",
                "Encounter.period",
                "Encounter.subject",
            ],
        ),
        DestinationSpec(
            name="lab-portal",
            purpose="PATRQT",
            event_types=["ORU^R01"],
            allow=[
                "Patient.name",
                "Observation.status",
                "Observation.code",
                "Observation.value[x]",
                "Observation.referenceRange",
                "Observation.interpretation",
                "Observation.effective[x]",
            ],
        ),
        DestinationSpec(
            name="outreach",
            purpose="CAREMGT",
            event_types=["ADT^A03", "ADT^A04", "ADT^A01"],
            consent_default="deny",
            allow=["Patient.name", "Patient.telecom", "Patient.address.postalCode", "Encounter.period"],
            transforms=[TransformSpec(kind="zip3"), TransformSpec(kind="drop-text")],
        ),
        DestinationSpec(
            name="research",
            purpose="HRESCH",
            profile="safe-harbor",
            event_types=["ADT^A01", "ADT^A03", "ORU^R01"],
            allow=[
                "Patient.id",
                "Patient.gender",
                "Patient.birthDate",
                "Patient.address",
                "Encounter.id",
                "Encounter.subject",
                "Encounter.status",
                "Encounter.class",
                "Encounter.period",
                "Observation.subject",
                "Observation.status",
                "Observation.code",
                "Observation.value[x]",
                "Observation.interpretation",
                "Observation.effective[x]",
            ],
            transforms=[TransformSpec(kind="pseudonym", key_env="BENCH_PSEUDONYM_KEY")],
        ),
    ]


def _builtin_events() -> list[dict[str, Any]]:
    events = []
    for i in range(40):
        pid = f"pat-{i}"
        patient = {
            "resourceType": "Patient",
            "id": pid,
            "identifier": [
                {"system": "urn:mrn", "value": f"MRN{i:06d}"},
                {"system": "urn:ssn", "value": f"999-00-{i:04d}"},
            ],
            "name": [{"family": f"Family{i}", "given": ["Given", "M"]}],
            "telecom": [{"system": "phone", "value": f"555-01{i:02d}"}],
            "gender": "female" if i % 2 else "male",
            "birthDate": f"{1930 + i}-0{1 + i % 9}-15",
            "address": [{"line": [f"{i} Main St"], "city": "Boston", "state": "MA", "postalCode": "02139"}],
        }
        encounter = {
            "resourceType": "Encounter",
            "id": f"enc-{i}",
            "status": "finished" if i % 3 == 0 else "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "identifier": [{"value": f"V{i:05d}"}],
            "period": {"start": "2024-03-05T10:15:00Z"},
            "subject": {"reference": f"Patient/{pid}"},
            "location": [{"location": {"display": "4 West"}}],
        }
        obs = {
            "resourceType": "Observation",
            "id": f"obs-{i}",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "718-7", "display": "Hemoglobin"}]},
            "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": "2024-03-05T09:00:00Z",
            "valueQuantity": {"value": 7.2 + i, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"},
            "interpretation": [{"coding": [{"code": "L"}]}],
            "referenceRange": [{"text": "12-16"}],
            "note": [{"text": "called patient"}],
        }
        etype = ("ADT^A01", "ADT^A03", "ORU^R01", "ADT^A08")[i % 4]
        resources = [patient, obs] if etype.startswith("ORU") else [patient, encounter]
        events.append(_envelope(f"ev-{i}", etype, pid, resources))
    return events


def _envelope(event_id: str, etype: str, euid: str, resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "event_type": etype,
        "source": "bench",
        "source_message_id": event_id,
        "patient": {"euid": euid, "identifiers": [{"system": "urn:mrn", "value": euid, "type": "MR"}]},
        "occurred_at": "2024-03-05T10:15:00Z",
        "received_at": "2024-03-05T10:15:01Z",
        "resources": resources,
        "destination": None,
        "purpose": None,
        "lineage": {"topic": "identified.events", "partition": 0, "offset": 0, "stages": []},
    }


def load_events(samples: Path | None) -> tuple[list[dict[str, Any]], str]:
    """Events built from the sample Bundles (Patient/Encounter/Observation-bearing ones), else the built-ins."""
    events: list[dict[str, Any]] = []
    if samples is not None and samples.is_dir():
        for path in sorted(samples.rglob("*.json")):
            raw = path.read_bytes()
            try:
                bundle = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
                continue
            ev = fhir_to_event(bundle, raw, "bench")
            if any(r.get("resourceType") in ("Patient", "Encounter", "Observation") for r in ev["resources"]):
                ev["patient"]["euid"] = ev["patient"]["euid"] or ev["event_id"]
                events.append(ev)
    if events:
        return events, f"samples:{samples}"
    return _builtin_events(), "builtin"


def _consents(events: list[dict[str, Any]]) -> dict[str, ConsentState]:
    out = {}
    for i, euid in enumerate(sorted({e["patient"]["euid"] for e in events})):
        if i % 2:
            continue
        out[euid] = ConsentState.from_consents(
            [
                {
                    "resourceType": "Consent",
                    "id": f"c-{i}",
                    "status": "active",
                    "scope": {"coding": [{"code": "patient-privacy"}]},
                    "provision": {"type": "permit", "provision": [{"type": "deny", "purpose": [{"code": "HMARKT"}]}]},
                }
            ]
        )
    return out


def run_bench(seconds: float = 2.0, samples: Path | None = DEFAULT_SAMPLES) -> dict[str, Any]:
    plans: list[DestinationPlan] = [compile_destination(d, keys=_BENCH_KEYS) for d in bench_destinations()]
    events, source = load_events(samples)
    consents = _consents(events)
    work = [(e, consents.get(e["patient"]["euid"])) for e in events]
    recorded = "2024-03-05T10:15:02Z"
    delivered = routed = 0
    # warm-up: fills memo caches the way a long-running worker would have them
    for ev, c in work:
        for p in plans:
            p.apply(ev, c, recorded=recorded)
    # per-core rate = events per CPU-second of this process, so other load on the machine does not skew it
    start = time.perf_counter()
    cpu_start = time.process_time()
    deadline = start + seconds
    while True:
        for ev, c in work:
            for p in plans:
                if isinstance(p.apply(ev, c, recorded=recorded), Delivered):
                    delivered += 1
        routed += len(work)
        if time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - start
    cpu = max(time.process_time() - cpu_start, 1e-9)
    return {
        "events": routed,
        "destinations": len(plans),
        "seconds": round(elapsed, 3),
        "cpu_seconds": round(cpu, 3),
        "events_per_s": round(routed / cpu),
        "destination_events_per_s": round(routed * len(plans) / cpu),
        "wall_events_per_s": round(routed / elapsed),
        "delivered_per_event": round(delivered / routed, 3),
        "distinct_events": len(work),
        "source": source,
    }


def add_bench_route_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``clinstream bench route [--json] [--seconds S] [--samples DIR]`` (under the ``bench`` subcommand)."""
    p = subparsers.add_parser("route", help="route-stage throughput (5 destinations, one core)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--seconds", type=float, default=3.0, help="measurement time (default 3)")
    p.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES, help="directory of FHIR Bundle JSON samples")
    p.set_defaults(handler=bench_route_command, func=bench_route_command)  # func: the clinstream CLI convention
    return p


def bench_route_command(args: argparse.Namespace, out: Any = None) -> int:
    out = out or sys.stdout
    result = run_bench(args.seconds, args.samples)
    if args.json:
        out.write(orjson.dumps(result).decode() + "\n")
    else:
        out.write(
            f"route: {result['events_per_s']:,} events/s ({result['destination_events_per_s']:,} destination-events/s)"
            f" over {result['distinct_events']} {result['source']} events x {result['destinations']} destinations,"
            f" {result['delivered_per_event']} deliveries/event\n"
        )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="clinstream bench")
    add_bench_route_parser(parser.add_subparsers(dest="bench", required=True))
    ns = parser.parse_args()
    raise SystemExit(ns.handler(ns))
