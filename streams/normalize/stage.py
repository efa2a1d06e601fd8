"""The normalize stage: ``raw.<format>.<source>`` -> ``canonical.events``.

Pure logic around the v2-to-FHIR mapping; the Faust shell lives in ``streams.app``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from schemas import headers as H
from schemas.envelope import encode_event, event_id_for, schema_fingerprint, utc_now_iso
from streams.normalize.hl7v2 import convert_message, event_summary
from streams.stage import InRecord, Outcome, Output
from topology.model import CANONICAL


@dataclass
class NormalizeStage:
    input_topics: Sequence[str]
    name: str = "normalize"
    output_topic: str = CANONICAL

    def process(self, record: InRecord) -> Outcome:
        source = record.headers.get(H.SOURCE) or record.topic.rsplit(".", 1)[-1]
        fmt = record.topic.split(".")[1] if record.topic.startswith("raw.") else "hl7v2"
        if fmt != "hl7v2":
            return Outcome.dead_letter(ValueError(f"no normalizer for format {fmt!r}"))
        event = to_event(record.value, source=source, headers=record.headers,
                         origin=(record.topic, record.partition, record.offset))
        # The resources as written to canonical.events: dedupe and identity, which hand the event on
        # with its resources unchanged, write the same JSON instead of serialising it again (two
        # orjson.dumps of the resources per message, ~15 us each; schemas.envelope.encode_event).
        event["resources_json"] = orjson.dumps(event["resources"]).decode()
        pairs = [
            (H.EVENT_ID, event["event_id"]),
            (H.SOURCE, source),
            (H.TRACEPARENT, record.headers.get(H.TRACEPARENT, "")),
            (H.RECEIVED_AT, event["received_at"]),
            (H.SCHEMA_FINGERPRINT, schema_fingerprint()),
        ]
        if H.REDRIVE_COUNT in record.headers:  # dedupe lets an operator's redrive through
            pairs.append((H.REDRIVE_COUNT, record.headers[H.REDRIVE_COUNT]))
        out_headers = H.encode(pairs)
        return Outcome.forward(Output(self.output_topic, encode_event(event), record.key, out_headers, event))


def to_event(
    raw: bytes,
    *,
    source: str,
    headers: dict[str, str] | None = None,
    origin: tuple[str, int, int] = ("-", -1, -1),
) -> dict[str, Any]:
    """One HL7 v2 message -> envelope dict. Raises the mapping's typed errors on bad input."""
    headers = headers or {}
    bundle = convert_message(raw, source=source)
    summary = event_summary(bundle)
    resources = [entry["resource"] for entry in bundle.get("entry", ())]
    return {
        "event_id": headers.get(H.EVENT_ID) or event_id_for(source, raw),
        "event_type": summary["event_type"],
        "source": source,
        "source_message_id": summary.get("control_id") or None,
        "patient": {"euid": None, "identifiers": [
            {"system": i.get("system"), "value": i["value"], "type": i.get("type")}
            for i in summary.get("patient_identifiers", ()) if i.get("value")
        ]},
        "occurred_at": summary.get("occurred_at"),
        "received_at": headers.get(H.RECEIVED_AT) or utc_now_iso(),
        "resources": resources,
        "destination": None,
        "purpose": None,
        "lineage": {"topic": origin[0], "partition": origin[1], "offset": origin[2], "stages": ["normalize"]},
    }
