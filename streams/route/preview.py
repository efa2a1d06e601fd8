"""``clinstream preview``: what exactly would one destination receive for this message?

FHIR input (a resource or a Bundle, JSON) is turned into an envelope here; anything else
(HL7 v2 ...) goes through the ``to_event`` converter the caller injects. Output is the
projected envelope and its disclosure record, or ``denied: <reason>``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from schemas.envelope import event_id_for, utc_now_iso
from streams.route.consent import ConsentState
from streams.route.errors import ConsentError, PreviewInputError, RouteError
from streams.route.plan import Delivered, compile_destination
from topology.model import Topology, TopologyError, load_topology

V2_EVENT_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0003"


def _event_type(resource: dict[str, Any]) -> str:
    if resource.get("resourceType") != "Bundle":
        return f"FHIR^{resource.get('resourceType')}"
    for entry in resource.get("entry") or ():
        res = (entry or {}).get("resource") or {}
        if res.get("resourceType") != "MessageHeader":
            continue
        coding = res.get("eventCoding") or {}
        display = coding.get("display") or ""
        if "^" in display:  # v2-to-FHIR keeps the v2 message type in the display: ORU^R01^ORU_R01
            return "^".join(display.split("^")[:2])
        if coding.get("code"):
            return f"FHIR^{coding['code']}"
    return "FHIR^Bundle"


def fhir_to_event(resource: dict[str, Any], raw: bytes, source: str = "preview") -> dict[str, Any]:
    """A FHIR resource or Bundle -> the canonical envelope dict (resources = the Bundle's entries)."""
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise PreviewInputError("JSON input is not a FHIR resource (no resourceType)")
    if resource["resourceType"] == "Bundle":
        resources = [e["resource"] for e in resource.get("entry") or () if isinstance((e or {}).get("resource"), dict)]
    else:
        resources = [resource]
    patient = next((r for r in resources if r.get("resourceType") == "Patient"), None)
    identifiers = []
    for ident in (patient or {}).get("identifier") or ():
        if isinstance(ident, dict) and isinstance(ident.get("value"), str):
            codes = [c.get("code") for c in (ident.get("type") or {}).get("coding") or () if c.get("code")]
            identifiers.append(
                {"system": ident.get("system"), "value": ident["value"], "type": codes[0] if codes else None}
            )
    occurred = resource.get("timestamp") or (resource.get("meta") or {}).get("lastUpdated")
    return {
        "event_id": event_id_for(source, raw),
        "event_type": _event_type(resource),
        "source": source,
        "source_message_id": (resource.get("identifier") or {}).get("value")
        if isinstance(resource.get("identifier"), dict)
        else resource.get("id"),
        "patient": {"euid": (patient or {}).get("id"), "identifiers": identifiers},
        "occurred_at": occurred,
        "received_at": utc_now_iso(),
        "resources": resources,
        "destination": None,
        "purpose": None,
        "lineage": {"topic": "preview", "partition": 0, "offset": 0, "stages": ["preview"]},
    }


def preview(
    topology: Topology,
    destination_name: str,
    event: dict[str, Any],
    consent: ConsentState | None = None,
    *,
    keys: Mapping[str, bytes] | None = None,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None, str | None]:
    """(projected event, disclosure AuditEvent, None) or (None, None, denial reason)."""
    plan = compile_destination(topology.destination(destination_name), keys=keys)
    decision = plan.apply(event, consent)
    if isinstance(decision, Delivered):
        return decision.event, decision.disclosure, None
    return None, None, decision.reason


def add_preview_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``clinstream preview --topology FILE --destination NAME [--consent FILE] [--json] PATH|-``."""
    p = subparsers.add_parser("preview", help="show exactly what one destination would receive for a message")
    p.add_argument("--topology", required=True, help="topology YAML")
    p.add_argument("--destination", required=True, help="destination name in the topology")
    p.add_argument("--consent", help="FHIR Consent resource or Bundle of Consents (JSON) for this patient")
    p.add_argument("--json", action="store_true", help="one JSON object {event, disclosure} or {denied}")
    p.add_argument("--source", default="preview", help="source name to put in the envelope")
    p.add_argument("path", help="message file (HL7 v2 or FHIR JSON) or - for stdin")
    p.set_defaults(handler=preview_command)
    return p


def _load_consent(path: str) -> ConsentState:
    data = orjson.loads(Path(path).read_bytes())
    if isinstance(data, dict) and data.get("resourceType") == "Bundle":
        items = [e.get("resource") for e in data.get("entry") or ()]
        return ConsentState.from_consents(
            r for r in items if isinstance(r, dict) and r.get("resourceType") == "Consent"
        )
    return ConsentState.from_consents([data])


def _dump(obj: Any) -> str:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode()


def preview_command(
    args: argparse.Namespace,
    to_event: Callable[[bytes, str], dict[str, Any]],
    out: Any = None,
    err: Any = None,
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    name = "<stdin>" if args.path == "-" else args.path
    try:
        topology = load_topology(args.topology)
        topology.destination(args.destination)
    except TopologyError as exc:
        print(f"error: {exc}", file=err)
        return 1
    try:
        raw = sys.stdin.buffer.read() if args.path == "-" else Path(args.path).read_bytes()
    except OSError as exc:
        print(f"error: {name}: cannot read input: {exc.strerror}", file=err)
        return 1
    try:
        if raw.lstrip()[:1] == b"{":
            event = fhir_to_event(orjson.loads(raw), raw, getattr(args, "source", "preview"))
        else:
            event = to_event(raw, getattr(args, "source", "preview"))
    except orjson.JSONDecodeError as exc:
        print(f"error: {name}: not valid JSON: {exc}", file=err)
        return 1
    except Exception as exc:  # the injected converter raises its own error types; report, never crash
        print(f"error: {name}: cannot convert input: {type(exc).__name__}: {exc}", file=err)
        return 1
    consent = None
    if args.consent:
        try:
            consent = _load_consent(args.consent)
        except (OSError, orjson.JSONDecodeError, ConsentError) as exc:
            print(f"error: {args.consent}: cannot read consent: {exc}", file=err)
            return 1
    try:
        projected, disclosure, reason = preview(topology, args.destination, event, consent)
    except RouteError as exc:
        print(f"error: {exc}", file=err)
        return 1
    if args.json:
        body = {"denied": reason} if reason else {"event": projected, "disclosure": disclosure}
        out.write(_dump(body) + "\n")
    elif reason:
        out.write(f"denied: {reason}\n")
    else:
        out.write(
            f"# {args.destination} would receive:\n{_dump(projected)}\n# disclosure record:\n{_dump(disclosure)}\n"
        )
    return 0
