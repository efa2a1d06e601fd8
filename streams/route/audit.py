"""Disclosure log: one FHIR R4 ``AuditEvent`` per delivered event (IHE BALP Privacy Disclosure at Source).

Shape follows ``IHE.BasicAudit.PrivacyDisclosure.Source``: type DCM 110106 "Export",
subtype ISO 21089 ``disclose``, purposeOfEvent from the destination's v3 PurposeOfUse,
agents with Source Role ID (us) and Destination Role ID (the destination), an entity
for the patient (EUID, role Patient) and one for the data disclosed (event id, the
element paths actually sent). The id is deterministic so a replayed event yields the
same record and the log can be deduplicated downstream.

``disclosures_for`` and the ``clinstream audit disclosures`` command read these
records back (the caller supplies them, e.g. from the ``audit.disclosures`` topic)
to answer a patient's accounting-of-disclosures request (45 CFR 164.528).
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.envelope import utc_now_iso
from schemas.ids import uuid5_str

BALP_PROFILE = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PrivacyDisclosure.Source"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
LIFECYCLE = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
EUID_SYSTEM = "urn:clinstream:euid"
EVENT_SYSTEM = "urn:clinstream:event-id"
DESTINATION_SYSTEM = "urn:clinstream:destination"
_AUDIT_NS = uuid.UUID("0c2b3f3e-5d0e-4d7b-9a6b-6f1b2b0d7a21")

PURPOSE_DISPLAY = {
    "TREAT": "treatment",
    "ETREAT": "emergency treatment",
    "HPAYMT": "healthcare payment",
    "HOPERAT": "healthcare operations",
    "HRESCH": "healthcare research",
    "PUBHLTH": "public health",
    "HMARKT": "healthcare marketing",
    "PATRQT": "patient requested",
    "COC": "coordination of care",
    "CAREMGT": "care management",
}

_TYPE = {"system": DCM, "code": "110106", "display": "Export"}
_SUBTYPE = [{"system": LIFECYCLE, "code": "disclose", "display": "Disclose Record Lifecycle Event"}]
_SOURCE_AGENT = {
    "type": {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]},
    "who": {"identifier": {"system": DESTINATION_SYSTEM, "value": "clinstream-route"}, "display": "clinstream route"},
    "requestor": False,
}
_DEST_TYPE = {"coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]}
_SOURCE = {
    "site": "clinstream",
    "observer": {"display": "clinstream route"},
    "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
}
_PATIENT_TYPE = {"system": ENTITY_TYPE, "code": "1", "display": "Person"}
_PATIENT_ROLE = {"system": OBJECT_ROLE, "code": "1", "display": "Patient"}
_DATA_TYPE = {"system": ENTITY_TYPE, "code": "2", "display": "System Object"}
_DATA_ROLE = {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"}


_META = {"profile": [BALP_PROFILE]}


def audit_id(event_id: str, destination: str) -> str:
    return uuid5_str(_AUDIT_NS, f"{event_id}\x1f{destination}")


class DisclosureTemplate:
    """The per-destination parts of its AuditEvents, built once; records share them (treat as read-only)."""

    __slots__ = ("agents", "destination", "purpose_of_event")

    def __init__(
        self, destination: str, purpose: str, organization: str | None = None, topic: str | None = None
    ) -> None:
        who: dict[str, Any] = {
            "identifier": {"system": DESTINATION_SYSTEM, "value": destination},
            "display": destination,
        }
        if organization:
            who = (
                {"reference": organization, "display": destination}
                if "/" in organization
                else {"identifier": {"value": organization}, "display": destination}
            )
        dest_agent: dict[str, Any] = {"type": _DEST_TYPE, "who": who, "requestor": False}
        if topic:
            dest_agent["network"] = {"address": topic, "type": "5"}  # 5 = URI (the Kafka topic it was written to)
        self.destination = destination
        self.agents = [_SOURCE_AGENT, dest_agent]
        self.purpose_of_event = [
            {"coding": [{"system": ACT_REASON, "code": purpose, "display": PURPOSE_DISPLAY.get(purpose, purpose)}]}
        ]

    def build(
        self, event_id: str, event_type: str, euid: str | None, elements: Sequence[str], recorded: str | None = None
    ) -> dict[str, Any]:
        data = {
            "what": {"identifier": {"system": EVENT_SYSTEM, "value": event_id}},
            "type": _DATA_TYPE,
            "role": _DATA_ROLE,
            "name": event_type,
            "detail": [{"type": "elements", "valueString": " ".join(elements)}],
        }
        entities = (
            [
                {
                    "what": {"identifier": {"system": EUID_SYSTEM, "value": euid}},
                    "type": _PATIENT_TYPE,
                    "role": _PATIENT_ROLE,
                },
                data,
            ]
            if euid
            else [data]
        )
        return {
            "resourceType": "AuditEvent",
            "id": audit_id(event_id, self.destination),
            "meta": _META,
            "type": _TYPE,
            "subtype": _SUBTYPE,
            "action": "R",
            "recorded": recorded or utc_now_iso(),
            "outcome": "0",
            "purposeOfEvent": self.purpose_of_event,
            "agent": self.agents,
            "source": _SOURCE,
            "entity": entities,
        }


def build_disclosure(
    *,
    event_id: str,
    event_type: str,
    destination: str,
    purpose: str,
    euid: str | None,
    elements: Sequence[str],
    recorded: str | None = None,
    organization: str | None = None,
    topic: str | None = None,
) -> dict[str, Any]:
    """The AuditEvent for one event delivered to one destination (plain dict, built without pydantic)."""
    return DisclosureTemplate(destination, purpose, organization, topic).build(
        event_id, event_type, euid, elements, recorded
    )


@dataclass(frozen=True, slots=True)
class DisclosureRow:
    when: str
    destination: str
    purpose: str
    elements: list[str]
    event_id: str


def _parse_instant(value: str) -> datetime | None:
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _row(record: dict[str, Any]) -> tuple[str | None, DisclosureRow] | None:
    if not isinstance(record, dict) or record.get("resourceType") != "AuditEvent":
        return None
    if (record.get("type") or {}).get("code") != "110106":
        return None
    euid: str | None = None
    event_id = ""
    elements: list[str] = []
    for ent in record.get("entity") or []:
        ident = (ent.get("what") or {}).get("identifier") or {}
        if ident.get("system") == EUID_SYSTEM:
            euid = ident.get("value")
        elif ident.get("system") == EVENT_SYSTEM:
            event_id = ident.get("value") or ""
            for det in ent.get("detail") or []:
                if det.get("type") == "elements":
                    elements = (det.get("valueString") or "").split()
    destination = ""
    for agent in record.get("agent") or []:
        codes = {c.get("code") for c in (agent.get("type") or {}).get("coding") or []}
        if "110152" in codes:
            destination = (agent.get("who") or {}).get("display") or ""
    purpose = ""
    for pc in record.get("purposeOfEvent") or []:
        for c in pc.get("coding") or []:
            purpose = purpose or c.get("code") or ""
    return euid, DisclosureRow(str(record.get("recorded") or ""), destination, purpose, elements, event_id)


def disclosures_for(
    records: Iterable[dict[str, Any]], patient: str, since: datetime | None = None
) -> list[DisclosureRow]:
    """Disclosures of ``patient`` (EUID), oldest first, optionally only those recorded at/after ``since``."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    rows: list[tuple[datetime, DisclosureRow]] = []
    seen: set[tuple[str, str]] = set()
    for record in records:
        parsed = _row(record)
        if parsed is None or parsed[0] != patient:
            continue
        row = parsed[1]
        when = _parse_instant(row.when)
        if when is None or (since is not None and when < since):
            continue
        key = (row.event_id, row.destination)
        if key in seen:  # replays re-emit the same disclosure; report it once
            continue
        seen.add(key)
        rows.append((when, row))
    rows.sort(key=lambda pair: pair[0])
    return [row for _, row in rows]


def add_audit_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``clinstream audit disclosures --patient EUID [--since T] [--json]``."""
    audit = subparsers.add_parser("audit", help="audit log queries")
    sub = audit.add_subparsers(dest="audit_command", required=True)
    p = sub.add_parser("disclosures", help="accounting of disclosures for one patient")
    p.add_argument("--patient", required=True, help="enterprise id (EUID)")
    p.add_argument("--since", help="ISO 8601 date or instant; only disclosures recorded from then on")
    p.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    p.set_defaults(handler=audit_disclosures_command)
    return p


def audit_disclosures_command(
    args: argparse.Namespace, read_records: Callable[[], Iterable[dict[str, Any]]], out: Any = None
) -> int:
    out = out or sys.stdout
    since = None
    if args.since:
        since = _parse_instant(args.since)
        if since is None:
            print(f"error: --since {args.since!r} is not an ISO 8601 date/instant", file=sys.stderr)
            return 2
    rows = disclosures_for(read_records(), args.patient, since)
    if args.json:
        out.write(orjson.dumps([asdict(r) for r in rows], option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Disclosures for {args.patient}" + (f" since {args.since}" if args.since else ""))
    for col in ("when", "destination", "purpose", "elements", "event id"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.when, r.destination, r.purpose, "\n".join(r.elements), r.event_id)
    Console(file=out, width=160).print(table)
    if not rows:
        out.write("no disclosures recorded\n")
    return 0
