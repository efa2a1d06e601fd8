from __future__ import annotations

import argparse
import io
from pathlib import Path

import orjson

from streams.route.preview import add_preview_parser, fhir_to_event, preview, preview_command
from tests.unit.route.conftest import ENCOUNTER, PATIENT, make_event
from topology.model import load_topology

DEMO = str(Path(__file__).parents[3] / "topology/examples/demo.yaml")
BUNDLE = {
    "resourceType": "Bundle",
    "type": "message",
    "timestamp": "2024-03-05T10:15:00Z",
    "entry": [
        {
            "resource": {
                "resourceType": "MessageHeader",
                "eventCoding": {
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0003",
                    "code": "A01",
                    "display": "ADT^A01^ADT_A01",
                },
            }
        },
        {"resource": PATIENT},
        {"resource": ENCOUNTER},
    ],
}


def parser():
    p = argparse.ArgumentParser()
    add_preview_parser(p.add_subparsers(dest="cmd"))
    return p


def never(raw: bytes, source: str) -> dict:
    raise AssertionError("FHIR input must not go through the injected converter")


def test_fhir_bundle_to_event():
    ev = fhir_to_event(BUNDLE, orjson.dumps(BUNDLE))
    assert ev["event_type"] == "ADT^A01"
    assert [r["resourceType"] for r in ev["resources"]] == ["MessageHeader", "Patient", "Encounter"]
    assert ev["patient"]["euid"] == "pat-1" and ev["occurred_at"] == "2024-03-05T10:15:00Z"
    single = fhir_to_event(ENCOUNTER, b"x")
    assert single["event_type"] == "FHIR^Encounter" and single["resources"] == [ENCOUNTER]


def test_preview_function():
    topo = load_topology(DEMO)
    event, disclosure, reason = preview(topo, "billing", make_event([PATIENT, ENCOUNTER]))
    assert reason is None and event["destination"] == "billing"
    assert event["resources"][0]["name"] == [{"family": "Doe", "given": ["Jane", "Q"]}]
    assert disclosure["resourceType"] == "AuditEvent"
    assert preview(topo, "billing", make_event([PATIENT], "ORU^R01")) == (None, None, "event-type")


def test_preview_command_fhir_file(tmp_path):
    f = tmp_path / "msg.json"
    f.write_bytes(orjson.dumps(BUNDLE))
    out = io.StringIO()
    args = parser().parse_args(["preview", "--topology", DEMO, "--destination", "research", "--json", str(f)])
    assert args.handler(args, never, out=out) == 0
    body = orjson.loads(out.getvalue())
    blob = orjson.dumps(body["event"]).decode()
    assert "Doe" not in blob and "MRN12345" not in blob and "02139" not in blob
    assert body["disclosure"]["purposeOfEvent"][0]["coding"][0]["code"] == "HRESCH"
    out = io.StringIO()
    args = parser().parse_args(["preview", "--topology", DEMO, "--destination", "billing", str(f)])
    assert preview_command(args, never, out=out) == 0
    assert out.getvalue().startswith("# billing would receive:") and "# disclosure record:" in out.getvalue()


def test_preview_command_injected_converter_and_denial(tmp_path):
    f = tmp_path / "msg.hl7"
    f.write_bytes(b"MSH|^~\\&|...\rPID|||X\r")
    seen = []

    def to_event(raw: bytes, source: str) -> dict:
        seen.append(raw)
        return make_event([PATIENT], "ORU^R01")

    out = io.StringIO()
    args = parser().parse_args(["preview", "--topology", DEMO, "--destination", "billing", str(f)])
    assert preview_command(args, to_event, out=out) == 0
    assert out.getvalue() == "denied: event-type\n" and seen


def test_preview_command_consent_denial(tmp_path):
    f = tmp_path / "msg.json"
    f.write_bytes(orjson.dumps(BUNDLE))
    c = tmp_path / "consent.json"
    c.write_bytes(orjson.dumps({"resourceType": "Consent", "status": "active", "provision": {"type": "deny"}}))
    out = io.StringIO()
    args = parser().parse_args(["preview", "--topology", DEMO, "--destination", "billing", "--consent", str(c), str(f)])
    assert preview_command(args, never, out=out) == 0
    assert out.getvalue() == "denied: consent-denied\n"


def test_preview_command_unreadable_input(tmp_path):
    err = io.StringIO()
    missing = str(tmp_path / "nope.hl7")
    args = parser().parse_args(["preview", "--topology", DEMO, "--destination", "billing", missing])
    assert preview_command(args, never, out=io.StringIO(), err=err) == 1
    assert missing in err.getvalue()
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"{not json")
    err = io.StringIO()
    args = parser().parse_args(["preview", "--topology", DEMO, "--destination", "billing", str(bad)])
    assert preview_command(args, never, out=io.StringIO(), err=err) == 1
    assert str(bad) in err.getvalue()

    def broken(raw: bytes, source: str) -> dict:
        raise ValueError("no MSH segment")

    junk = tmp_path / "junk.txt"
    junk.write_bytes(b"hello")
    err = io.StringIO()
    args = parser().parse_args(["preview", "--topology", DEMO, "--destination", "billing", str(junk)])
    assert preview_command(args, broken, out=io.StringIO(), err=err) == 1
    assert str(junk) in err.getvalue() and "no MSH segment" in err.getvalue()
    err = io.StringIO()
    args = parser().parse_args(["preview", "--topology", DEMO, "--destination", "nobody", str(junk)])
    assert preview_command(args, broken, out=io.StringIO(), err=err) == 1
    assert "nobody" in err.getvalue()


def test_preview_command_stdin(monkeypatch):
    import sys

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(orjson.dumps(BUNDLE))))
    out = io.StringIO()
    args = parser().parse_args(["preview", "--topology", DEMO, "--destination", "ehr-replica", "--json", "-"])
    assert preview_command(args, never, out=out) == 0
    event = orjson.loads(out.getvalue())["event"]
    assert event["destination"] == "ehr-replica" and event["event_type"] == "ADT^A01"
    assert [r["resourceType"] for r in event["resources"]] == ["Patient", "Encounter"]
