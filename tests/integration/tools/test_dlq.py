"""DLQ tooling against a real broker: list, show (masked / revealed), redrive with limits and a log."""

from __future__ import annotations

import orjson
import pytest
from confluent_kafka import Producer

from schemas import headers as H
from streams.dlq import RecordRef, list_dlq, redrive, show_record
from tests.support.topics import create_topics, read_all
from topology.settings import KafkaSettings

HL7 = (b"MSH|^~\\&|LAB|HOSP|CLIN|HOSP|20240101||ORU^R01|C1|P|2.5\r"
       b"PID|1||MRN77^^^HOSP^MR||SMITH^JOHN||19700101|M\rOBX|1|NM|HB||13.5\r")
FHIR = orjson.dumps({"resourceType": "Patient", "name": [{"family": "Smith"}],
                     "identifier": [{"system": "urn:mrn", "value": "MRN77"}]})


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes | None, list[tuple[str, bytes]]]]) -> None:
    p = Producer({"bootstrap.servers": bootstrap})
    for value, key, headers in records:
        p.produce(topic, value, key=key, headers=headers)
    assert p.flush(15) == 0


def _dlq_hdrs(stage: str, error_class: str, origin: str, offset: int, **extra: str) -> list[tuple[str, bytes]]:
    return H.dlq_headers(stage=stage, error=f"failed at position {offset}", error_class=error_class,
                         origin_topic=origin, origin_partition=0, origin_offset=offset, source="lab",
                         event_id=f"ev-{stage}-{offset}", extra=[(H.TRACEPARENT, "00-abc-def-01"), *extra.items()])


@pytest.fixture
def dlq_setup(kafka_bootstrap: str, unique_name):
    stage = unique_name("st")
    dlq_topic, origin = f"dlq.{stage}", unique_name("origin")
    create_topics(kafka_bootstrap, [dlq_topic, origin])
    records = [
        (HL7, b"HOSP|MRN77", _dlq_hdrs(stage, "Hl7ParseError", origin, 1)),
        (FHIR, b"urn:mrn|MRN77", _dlq_hdrs(stage, "MappingError", origin, 2)),
        (FHIR + b" ", None, _dlq_hdrs(stage, "MappingError", origin, 3)),
        (b"partial", None, _dlq_hdrs(stage, "MessageTooLarge", origin, 4, truncated="true")),
        (b"x", None, [(H.ERROR_STAGE, stage.encode()), (H.ERROR_CLASS, b"Orphan")]),
    ]
    _produce(kafka_bootstrap, dlq_topic, records)
    return KafkaSettings(bootstrap_servers=kafka_bootstrap), stage, dlq_topic, origin


def test_list_groups_by_stage_and_error_class(dlq_setup):
    settings, stage, topic, _ = dlq_setup
    groups = list_dlq(settings, stage)
    counts = {(g.stage, g.error_class): g.count for g in groups}
    assert counts == {(stage, "Hl7ParseError"): 1, (stage, "MappingError"): 2, (stage, "MessageTooLarge"): 1,
                      (stage, "Orphan"): 1}
    mapping = next(g for g in groups if g.error_class == "MappingError")
    assert mapping.reasons == {"failed at position N": 2} and mapping.first_offset == f"{topic}:0:1"


def test_show_masks_phi_unless_revealed(dlq_setup):
    settings, _, topic, _ = dlq_setup
    masked = show_record(settings, f"{topic}:0:0")
    assert masked["payload_kind"] == "hl7v2" and masked["headers"][H.ERROR_CLASS] == "Hl7ParseError"
    assert "SMITH" not in masked["payload"] and "MRN77" not in masked["payload"] and masked["key"] == "***"
    assert "PID|***||***^^^***^***||***^***||***|***" in masked["payload"]
    assert "OBX|1|NM|HB||13.5" in masked["payload"]  # non-identifying segments stay readable
    fhir = show_record(settings, RecordRef(topic, 0, 1))
    doc = orjson.loads(fhir["payload"])
    assert doc == {"resourceType": "Patient", "name": [{"family": "***"}],
                   "identifier": [{"system": "urn:mrn", "value": "***"}]}
    revealed = show_record(settings, f"{topic}:0:1", reveal=True)
    assert "Smith" in revealed["payload"] and revealed["key"] == "urn:mrn|MRN77"


def test_redrive_to_origin_with_count_log_and_limits(dlq_setup, kafka_bootstrap: str):
    settings, stage, topic, origin = dlq_setup
    dry = redrive(settings, stage=stage, dry_run=True)
    assert dry.count("would-redrive") == 3
    assert {i.status for i in dry.items if i.status.startswith("refused")} == {
        "refused:truncated-payload", "refused:no-origin-topic"}
    assert read_all(kafka_bootstrap, origin) == []  # a dry run writes nothing

    report = redrive(settings, stage=stage, error_class="MappingError")
    assert report.count("redriven") == 2 and all(i.to.startswith(f"{origin}:0:") for i in report.items)
    out = read_all(kafka_bootstrap, origin, expect=2)
    assert sorted(m.value() for m in out) == sorted([FHIR, FHIR + b" "])
    first = next(m for m in out if m.value() == FHIR)
    h = H.as_dict(first.headers())
    assert first.key() == b"urn:mrn|MRN77"
    assert h[H.REDRIVE_COUNT] == "1" and h["redriven-from"] == f"{topic}:0:1"
    assert h[H.TRACEPARENT] == "00-abc-def-01" and h[H.EVENT_ID] == f"ev-{stage}-2" and H.ERROR_CLASS not in h

    again = redrive(settings, offsets=[f"{topic}:0:1"])
    assert [i.status for i in again.items] == ["skipped:already-redriven"]
    # the log counts the earlier redrive even though the DLQ record's header says 0
    limited = redrive(settings, offsets=[f"{topic}:0:1"], force=True, max_redrives=1)
    assert limited.items[0].status == "refused:redrive-count 1 reached max 1"
    forced = redrive(settings, offsets=[f"{topic}:0:1"], force=True)
    assert forced.items[0].status == "redriven" and forced.items[0].redrive_count == 2
    assert len(read_all(kafka_bootstrap, origin, expect=3)) == 3


def test_cli_list_show_redrive(dlq_setup, kafka_bootstrap: str, monkeypatch, capsys):
    import json

    from clinstream.cli import main

    _, stage, topic, origin = dlq_setup
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    assert main(["dlq", "list", "--stage", stage, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sum(g["count"] for g in listed) == 5
    assert main(["dlq", "show", f"{topic}:0:0"]) == 0
    shown = capsys.readouterr().out
    assert "PHI masked" in shown and "SMITH" not in shown and "error-class: Hl7ParseError" in shown
    assert main(["dlq", "redrive", "--stage", stage, "--error-class", "Hl7ParseError", "--dry-run"]) == 0
    assert "would redrive: 1; refused: 0; skipped: 0" in capsys.readouterr().out
    assert main(["dlq", "show", f"{topic}:0:99"]) == 1
    assert read_all(kafka_bootstrap, origin) == []
