"""Replay / backfill against a real broker: a time window re-routed under the current topology."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Producer

from schemas import headers as H
from schemas.envelope import decode_event, encode_event, schema_fingerprint, schema_header
from streams.replay import REPLAY_HEADER, ReplayError, parse_rate, parse_time, replay
from tests.support.topics import create_topics, read_all
from topology.model import AUDIT, DestinationSpec, Topology
from topology.settings import KafkaSettings

NOW = datetime.now(UTC).replace(microsecond=0)


def event(event_type: str = "ADT^A01") -> dict:
    eid = str(uuid.uuid4())
    return {
        "event_id": eid, "event_type": event_type, "source": "adt", "source_message_id": eid[:8],
        "patient": {"euid": f"E-{eid[:6]}", "identifiers": []},
        "occurred_at": None, "received_at": "2024-03-05T10:15:02.123Z",
        "resources": [{"resourceType": "Patient", "name": [{"family": "Doe"}], "gender": "female",
                       "birthDate": "1980-01-01"}],
        "destination": None, "purpose": None,
        "lineage": {"topic": "identified.events", "partition": 0, "offset": 1, "stages": ["identity"]},
    }


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


@pytest.fixture
def history(kafka_bootstrap: str, unique_name):
    source, dest = unique_name("hist"), unique_name("bf")
    create_topics(kafka_bootstrap, [source], partitions=2)
    create_topics(kafka_bootstrap, [f"dest.{dest}", AUDIT])
    base = NOW - timedelta(hours=10)
    in_window = [event() for _ in range(4)]
    records = [(encode_event(event()), base) for _ in range(3)]  # before the window
    records += [(encode_event(e), base + timedelta(hours=2, minutes=i)) for i, e in enumerate(in_window)]
    records += [(encode_event(event("ORU^R01")), base + timedelta(hours=2, minutes=30)),  # not for this destination
                (b"not avro", base + timedelta(hours=3)),
                # written with a schema this build does not have: counted, never misread
                (encode_event(event()), base + timedelta(hours=3, minutes=5))]
    foreign = len(records) - 1
    records += [(encode_event(event()), base + timedelta(hours=8)) for _ in range(2)]  # after the window
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    for i, (value, ts) in enumerate(records):
        schema = (H.SCHEMA_FINGERPRINT, b"e" * 64) if i == foreign else schema_header()
        p.produce(source, value, key=f"k{i % 5}".encode(), timestamp=ms(ts),
                  headers=[(H.TRACEPARENT, b"00-aa-bb-01"), schema])
    assert p.flush(15) == 0
    topo = Topology(name="t", destinations=[DestinationSpec(name=dest, event_types=["ADT^*"],
                                                            allow=["Patient.name", "Patient.gender"])])
    return topo, source, dest, base, {e["event_id"] for e in in_window}


def test_dry_run_counts_and_writes_nothing(history, kafka_bootstrap: str):
    topo, source, dest, base, _ = history
    report = replay(topo, KafkaSettings(bootstrap_servers=kafka_bootstrap), source_topic=source, destination=dest,
                    since=base + timedelta(hours=1), until=base + timedelta(hours=5), dry_run=True)
    assert (report.read, report.delivered) == (7, 4)
    assert report.denied == {"event-type": 1} and report.errors == {"not-a-clinical-event": 1, "other-schema": 1}
    assert read_all(kafka_bootstrap, f"dest.{dest}") == []


def test_replay_window_delivers_projected_events_and_disclosures(history, kafka_bootstrap: str):
    topo, source, dest, base, expected_ids = history
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    report = replay(topo, settings, source_topic=source, destination=dest, since=base + timedelta(hours=1),
                    until=base + timedelta(hours=5), rate=1000.0)
    assert (report.read, report.delivered, report.errors["not-a-clinical-event"]) == (7, 4, 1)
    out = read_all(kafka_bootstrap, f"dest.{dest}", expect=4)
    events = [decode_event(m.value()) for m in out]
    assert {e["event_id"] for e in events} == expected_ids
    assert all(e["destination"] == dest and e["resources"] == [
        {"resourceType": "Patient", "name": [{"family": "Doe"}], "gender": "female"}] for e in events)
    h = H.as_dict(out[0].headers())
    assert h[REPLAY_HEADER] == report.run_id and h[H.TRACEPARENT] == "00-aa-bb-01"
    assert h[H.SCHEMA_FINGERPRINT] == schema_fingerprint()
    assert {m.key() for m in out} == {f"E-{i[:6]}".encode() for i in expected_ids}
    audits = [m for m in read_all(kafka_bootstrap, AUDIT) if H.as_dict(m.headers()).get(REPLAY_HEADER) == report.run_id]
    assert len(audits) == 4
    # a second replay of the same window produces the same event ids: idempotent sinks keep one copy each
    again = replay(topo, settings, source_topic=source, destination=dest, since=base + timedelta(hours=1),
                   until=base + timedelta(hours=5))
    assert again.delivered == 4
    ids = [decode_event(m.value())["event_id"] for m in read_all(kafka_bootstrap, f"dest.{dest}", expect=8)]
    assert len(ids) == 8 and set(ids) == expected_ids


def test_open_ended_window_and_bad_input(history, kafka_bootstrap: str):
    topo, source, dest, base, _ = history
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    report = replay(topo, settings, source_topic=source, destination=dest, since=base + timedelta(hours=7),
                    dry_run=True)
    assert (report.read, report.delivered) == (2, 2)
    with pytest.raises(ReplayError, match="does not exist"):
        replay(topo, settings, source_topic="no-such-topic-x", destination=dest, since=base, dry_run=True)


def test_time_and_rate_parsing():
    now = datetime(2024, 3, 1, 12, tzinfo=UTC)
    assert parse_time("90m", now) == datetime(2024, 3, 1, 10, 30, tzinfo=UTC)
    assert parse_time("2024-02-01T00:00:00Z") == datetime(2024, 2, 1, tzinfo=UTC)
    assert parse_time("2024-02-01") == datetime(2024, 2, 1, tzinfo=UTC)
    assert parse_time("1709294400000") == datetime(2024, 3, 1, 12, tzinfo=UTC)
    assert parse_rate("500/s") == 500.0
    with pytest.raises(ReplayError):
        parse_time("yesterday-ish")


def test_cli_dry_run_json(history, kafka_bootstrap: str, tmp_path, monkeypatch, capsys):
    import json

    from clinstream.cli import main

    _, source, dest, base, _ = history
    topo = tmp_path / "topology.yaml"
    topo.write_text(f"name: t\ndestinations:\n  - name: {dest}\n    event_types: ['ADT^*']\n"
                    f"    allow: [Patient.name]\n")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    since = (base + timedelta(hours=1)).isoformat()
    until = str(ms(base + timedelta(hours=5)))
    assert main(["replay", "-t", str(topo), "--from", source, "--since", since, "--until", until, "--to", dest,
                 "--dry-run", "--rate", "10000/s", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dry_run"] and out["read"] == 7 and out["delivered"] == 4 and out["denied"] == {"event-type": 1}
