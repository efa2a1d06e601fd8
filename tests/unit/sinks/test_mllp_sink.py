"""MLLP sink: FHIR → HL7 v2 rendering (parsed back with our parser) and ACK-driven delivery
against a real in-process MLLP receiver."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.sinks import SinkBatch, SinkConfigError, SinkRecord, SinkRejected, SinkRetryable, create_sink
from connectors.sinks.mllp import MllpSink, ack_detail
from connectors.sinks.mllp_receiver import ReceiverThread
from connectors.sinks.mllp_render import Header, RenderError, control_id_for, render_event, v2_ts
from schemas.hl7v2.ack import AckError, build_ack
from schemas.hl7v2.msh import peek_msh
from schemas.hl7v2.parser import Message, parse_message
from tests.support.events import make_event, wait_until
from tests.support.mllp import ScriptedReceiver
from topology.model import SinkSpec

TOPIC = "dest.legacy"


def _patient(**fields: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": "p1", **fields}


def _event(i: int = 1, *, patient: dict[str, Any] | None = None, encounter: dict[str, Any] | None = None,
           **overrides: Any) -> dict[str, Any]:
    resources = [patient or _patient(identifier=[{"system": "urn:oid:2.16.840.1.113883.3.1", "value": f"MRN{i}",
                                                  "type": {"coding": [{"code": "MR"}]}}])]
    if encounter is not None:
        resources.append(encounter)
    return make_event(i, "legacy", resources=resources, **overrides)


def _render(event: dict[str, Any], header: Header | None = None) -> Message:
    return parse_message(render_event(event, header or Header()).payload)


# --- rendering -------------------------------------------------------------------------------

def test_adt_message_header_and_segments() -> None:
    ev = _event(encounter={
        "resourceType": "Encounter", "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
        "identifier": [{"system": "urn:clinstream:v2:ns:GENHOSP", "value": "V0042"}],
        "period": {"start": "2024-05-01T09:30:00+02:00", "end": "2024-05-02T11:00:00Z"},
    })
    header = Header("CLINSTREAM", "HUB", "LEGACY_ADT", "GENHOSP", "2.4", "T")
    msg = _render(ev, header)
    assert [s.id for s in msg] == ["MSH", "EVN", "PID", "PV1"]
    msh = msg.segment("MSH")
    assert msh is not None
    assert [msh.get(n) for n in (3, 4, 5, 6, 11, 12)] == ["CLINSTREAM", "HUB", "LEGACY_ADT", "GENHOSP", "T", "2.4"]
    assert msh.field(9) == "ADT^A01^ADT_A01"
    assert msg.control_id == control_id_for(ev["event_id"]) and len(msg.control_id) == 20
    assert msh.get(7) == "20240501100001.250+0000"  # received_at: deterministic, unlike "now"
    evn = msg.segment("EVN")
    assert evn is not None and evn.get(1) == "A01" and evn.get(2) == "20240501100000+0000"
    pid = msg.segment("PID")
    assert pid is not None
    assert pid.get(3, comp=1) == "MRN1" and pid.get(3, comp=4, sub=2) == "2.16.840.1.113883.3.1"
    assert pid.get(3, comp=4, sub=3) == "ISO" and pid.get(3, comp=5) == "MR"
    pv1 = msg.segment("PV1")
    assert pv1 is not None
    assert pv1.get(2) == "E" and pv1.get(19, comp=1) == "V0042" and pv1.get(19, comp=4) == "GENHOSP"
    assert pv1.get(44) == "20240501093000+0200" and pv1.get(45) == "20240502110000+0000"


def test_patient_demographics_map_to_pid() -> None:
    patient = _patient(
        identifier=[{"system": "urn:clinstream:v2:ns:HOSP%20A", "value": "123"},
                    {"system": "urn:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427", "value": "X9"}],
        name=[{"use": "official", "family": "Doe", "given": ["Jane", "Q", "R"], "prefix": ["Dr"],
               "suffix": ["III"]}, {"use": "maiden", "family": "Roe"}],
        birthDate="1980-02-03", gender="female",
        address=[{"use": "home", "line": ["1 Main St", "Apt 2"], "city": "Springfield", "state": "IL",
                  "postalCode": "62701", "country": "USA"}],
        telecom=[{"system": "phone", "value": "555-0100", "use": "home"},
                 {"system": "phone", "value": "555-0199", "use": "mobile"},
                 {"system": "email", "value": "jane@example.org"},
                 {"system": "phone", "value": "555-0123", "use": "work"}],
    )
    pid = _render(_event(patient=patient)).segment("PID")
    assert pid is not None
    assert [r.get(1) for r in pid.repetitions(3)] == ["123", "X9"]
    assert pid.get(3, 0, 4) == "HOSP A" and pid.get(3, 1, 4, 2) == "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    assert [pid.get(5, 0, c) for c in (1, 2, 3, 4, 5, 7)] == ["Doe", "Jane", "Q R", "III", "Dr", "L"]
    assert pid.get(5, 1, 1) == "Roe" and pid.get(5, 1, 7) == "M"
    assert pid.get(7) == "19800203" and pid.get(8) == "F"
    assert [pid.get(11, 0, c) for c in range(1, 8)] == ["1 Main St", "Apt 2", "Springfield", "IL", "62701",
                                                          "USA", "H"]
    assert [pid.get(13, i, 1) for i in range(2)] == ["555-0100", "555-0199"]
    assert pid.get(13, 1, 3) == "CP" and pid.get(13, 2, 2) == "NET" and pid.get(13, 2, 4) == "jane@example.org"
    assert pid.get(14, 0, 1) == "555-0123" and pid.get(14, 0, 2) == "WPN"


@pytest.mark.parametrize(("gender", "code"), [("male", "M"), ("female", "F"), ("other", "O"), ("unknown", "U")])
def test_gender_codes(gender: str, code: str) -> None:
    pid = _render(_event(patient=_patient(gender=gender))).segment("PID")
    assert pid is not None and pid.get(8) == code


def test_delimiters_in_values_are_escaped_and_round_trip() -> None:
    nasty = "O|Brien^Smith~Jr\\X&Co"
    patient = _patient(name=[{"family": nasty, "given": ["A&B"]}],
                       identifier=[{"system": "urn:clinstream:v2:ns:A%7CB", "value": "1|2^3"}],
                       address=[{"line": ["Line\r\nTwo"], "city": "C~D"}])
    payload = render_event(_event(patient=patient), Header(sending_facility="F|^~\\&")).payload
    text = payload.decode()
    assert "O\\F\\Brien\\S\\Smith\\R\\Jr\\E\\X\\T\\Co" in text
    msg = parse_message(payload)
    assert [s.id for s in msg] == ["MSH", "EVN", "PID", "PV1"]  # no segment split by the CR in the address
    pid = msg.segment("PID")
    msh = msg.segment("MSH")
    assert pid is not None and msh is not None
    assert pid.get(5, comp=1) == nasty and pid.get(5, comp=2) == "A&B"
    assert pid.get(3, comp=1) == "1|2^3" and pid.get(3, comp=4) == "A|B"
    assert pid.get(11, comp=1) == "Line\nTwo" and pid.get(11, comp=3) == "C~D"
    assert msh.get(4) == "F|^~\\&"


def test_only_what_the_projection_left_is_sent() -> None:
    # The envelope still names an MRN (make_event), but the projected Patient has only a gender.
    ev = _event(patient=_patient(gender="unknown"))
    assert ev["patient"]["identifiers"]
    msg = _render(ev)
    pid = msg.segment("PID")
    assert pid is not None and pid.raw == "PID|1|||||||U"
    pv1 = msg.segment("PV1")
    assert pv1 is not None and pv1.raw == "PV1|1|N"  # required by ADT_A01; "not applicable", not invented
    assert "MRN" not in render_event(ev, Header()).payload.decode()


def test_rendering_is_deterministic() -> None:
    ev = _event(7)
    first, again = render_event(ev, Header()), render_event(dict(ev), Header())
    assert first.payload == again.payload and first.control_id == control_id_for(ev["event_id"])
    assert render_event(_event(8), Header()).control_id != first.control_id


@pytest.mark.parametrize(("event_type", "msh9"), [
    ("ADT^A01", "ADT^A01^ADT_A01"), ("ADT^A08", "ADT^A08^ADT_A01"), ("ADT^A03", "ADT^A03^ADT_A03"),
    ("ADT^A28", "ADT^A28^ADT_A05"), ("ADT^A31^ADT_A05", "ADT^A31^ADT_A05"), ("ADT^A60", "ADT^A60^ADT_A60"),
])
def test_message_type_and_structure(event_type: str, msh9: str) -> None:
    msh = _render(_event(event_type=event_type)).segment("MSH")
    assert msh is not None and msh.field(9) == msh9


@pytest.mark.parametrize(("event_type", "reason"), [
    ("ORU^R01", "no HL7 v2 rendering for ORU^R01"),
    ("SIU^S12", "no HL7 v2 rendering for SIU^S12"),
    ("ADT^A40", "no HL7 v2 rendering for ADT^A40 (needs MRG"),
    ("", "no HL7 v2 rendering for (no event_type)"),
])
def test_events_without_a_v2_rendering(event_type: str, reason: str) -> None:
    with pytest.raises(RenderError) as info:
        render_event(_event(event_type=event_type), Header())
    assert str(info.value).startswith(reason)


def test_adt_without_patient_is_not_rendered() -> None:
    ev = make_event(1, "legacy", resources=[{"resourceType": "Encounter", "id": "e1"}])
    with pytest.raises(RenderError, match="without a Patient resource"):
        render_event(ev, Header())


def test_non_ascii_declares_utf8() -> None:
    ev = _event(patient=_patient(name=[{"family": "Müller"}]))
    plain = _render(_event())
    assert plain.charset == ""
    msg = _render(ev)
    assert msg.charset == "UNICODE UTF-8"
    pid = msg.segment("PID")
    assert pid is not None and pid.get(5) == "Müller"


@pytest.mark.parametrize(("fhir", "v2"), [
    ("2024", "2024"), ("2024-05", "202405"), ("1980-02-03", "19800203"),
    ("2024-05-01T10:00:00Z", "20240501100000+0000"), ("2024-05-01T10:00:00.5-05:00", "20240501100000.5-0500"),
    ("2024-05-01T10:00", "202405011000"), (None, ""),
])
def test_v2_timestamps(fhir: str | None, v2: str) -> None:
    assert v2_ts(fhir) == v2


def test_unreadable_date_is_a_render_error() -> None:
    with pytest.raises(RenderError):
        render_event(_event(patient=_patient(birthDate="03/02/1980")), Header())


def test_ack_detail_reads_msa_and_err() -> None:
    header = peek_msh(render_event(_event(), Header(version="2.5")).payload)
    ack = build_ack(header, "AE", error=AckError(204, "Unknown key PID-3"))
    assert ack_detail(ack) == "ERR 204 Unknown key identifier; Unknown key PID-3"
    legacy = build_ack(peek_msh(render_event(_event(), Header(version="2.3")).payload), "AR",
                       error=AckError(207, "down"))
    assert ack_detail(legacy) == "down | ERR 207 Application internal error"


# --- options ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("options", "key"), [
    ({"host": "h", "port": 2575, "portt": 1}, "sink.options.portt"),
    ({"host": "h", "port": 0}, "sink.options.port"),
    ({"host": "h", "port": 2575, "version": "3.0"}, "sink.options.version"),
    ({"host": "h", "port": 2575, "tls": {"ca": "/nonexistent/ca.pem"}}, "sink.options.tls.ca"),
    ({"host": "h", "port": 2575, "tls": {"cafile": "x"}}, "sink.options.tls.cafile"),
    ({"host": "h", "port": 2575, "max_attempts": 0}, "sink.options.max_attempts"),
])
def test_option_errors_name_the_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(SinkConfigError) as info:
        create_sink(SinkSpec(kind="mllp", options=options), "legacy")
    assert info.value.key == key


# --- delivery against a real receiver --------------------------------------------------------

@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[ScriptedReceiver]:
    with ReceiverThread(ScriptedReceiver(out_path=tmp_path / "received.ndjson", slow_s=1.0)) as rcv:
        assert isinstance(rcv, ScriptedReceiver)
        yield rcv


def _sink(port: int, **options: Any) -> MllpSink:
    opts = {"host": "127.0.0.1", "port": port, "ack_timeout_s": 0.3, "connect_timeout_s": 1.0,
            "retry_backoff_s": 0.01, "max_backoff_s": 0.05, **options}
    sink = create_sink(SinkSpec(kind="mllp", options=opts), "legacy")
    assert isinstance(sink, MllpSink)
    sink.start()
    return sink


def _batch(events: list[dict[str, Any]], partition: int = 0, first: int = 0) -> SinkBatch:
    return SinkBatch(TOPIC, partition, [SinkRecord(first + i, None, ev) for i, ev in enumerate(events)])


def _mrn(mrn: str, i: int) -> dict[str, Any]:
    return _event(i, patient=_patient(identifier=[{"system": "urn:clinstream:v2:ns:H", "value": mrn}]))


def test_delivers_in_order_and_the_receiver_files_each_once(receiver: ScriptedReceiver) -> None:
    sink = _sink(receiver.port)
    events = [_event(i) for i in range(5)]
    try:
        sink.write([_batch(events)])
        assert [r.control_id for r in receiver.received] == [control_id_for(e["event_id"]) for e in events]
        assert sink.health()["delivered"] == 5 and sink.resent == 0 and sink.health()["ok"]
        sink.write([_batch(events)])  # the runner repeating a write: nothing is sent twice
        assert len(receiver.received) == 5
    finally:
        sink.stop()
    assert receiver.out_path is not None
    lines = [orjson.loads(line) for line in receiver.out_path.read_bytes().splitlines()]
    assert [ln["control_id"] for ln in lines] == [r.control_id for r in receiver.received]
    assert lines[0]["message_type"] == "ADT^A01" and lines[0]["message"].startswith("MSH|^~\\&|CLINSTREAM|")


def test_negative_ack_rejects_just_that_record(receiver: ScriptedReceiver) -> None:
    sink = _sink(receiver.port)
    events = [_mrn("OK1", 1), _mrn("REJECT-ME", 2), _mrn("OK3", 3)]
    try:
        with pytest.raises(SinkRejected) as info:
            sink.write([_batch(events, partition=2, first=10)])
        assert info.value.offsets == [(2, 11)]
        assert "answered AE" in str(info.value) and "Unknown patient identifier REJECT" in str(info.value)
        assert control_id_for(events[1]["event_id"]) in str(info.value)
        # What the runner does next: the same batch without the refused record.
        kept = SinkBatch(TOPIC, 2, [SinkRecord(10, None, events[0]), SinkRecord(12, None, events[2])])
        sink.write([kept])
    finally:
        sink.stop()
    assert [receiver.arrivals(control_id_for(e["event_id"])) for e in events] == [1, 1, 1]
    assert receiver.accepted == 2 and sink.delivered == 2 and sink.rejected == 1


def test_ack_timeout_resends_the_same_message(receiver: ScriptedReceiver) -> None:
    sink = _sink(receiver.port, max_attempts=3)
    slow = _mrn("SLOW-1", 1)
    cid = control_id_for(slow["event_id"])
    try:
        sink.write([_batch([slow, _mrn("OK2", 2)])])
    finally:
        sink.stop()
    # The first send is answered (too late) after slow_s, on a connection the sink has closed.
    wait_until(lambda: receiver.arrivals(cid) == 2, 5, "the late answer to the first send")
    second, first = [r for r in receiver.received if r.control_id == cid]
    assert not second.duplicate and first.duplicate
    assert first.payload == second.payload  # same bytes, same control id
    assert sink.delivered == 2 and sink.resent == 1
    # The late answer to the first send finds a closed connection; the receiver filed it once.
    assert receiver.accepted == 2


def test_timeouts_exhaust_attempts_then_retryable(receiver: ScriptedReceiver) -> None:
    receiver.slow_s = 5.0
    sink = _sink(receiver.port, max_attempts=1)
    try:
        with pytest.raises(SinkRetryable, match="not acknowledged after 1 attempt"):
            sink.write([_batch([_mrn("SLOW-2", 1)])])
        assert sink.delivered == 0
    finally:
        sink.stop()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_receiver_is_retryable_and_trips_the_breaker() -> None:
    sink = _sink(_closed_port(), max_attempts=2, breaker_failures=4)
    try:
        with pytest.raises(SinkRetryable, match="after 2 attempt"):
            sink.write([_batch([_event(1)])])
        with pytest.raises(SinkRetryable):
            sink.write([_batch([_event(1)])])
        assert sink.breaker.state == "open" and not sink.health()["ok"]
        assert sink.sent == 0  # never connected, nothing written
    finally:
        sink.stop()


def test_reconnects_after_the_receiver_restarts(tmp_path: Path) -> None:
    first = ScriptedReceiver(out_path=tmp_path / "a.ndjson")
    with ReceiverThread(first):
        sink = _sink(first.port)
        sink.write([_batch([_event(1)])])
    try:
        with pytest.raises(SinkRetryable):  # the receiver is gone: the kept connection is dead
            sink.write([_batch([_event(2)], first=1)])
        with ReceiverThread(ScriptedReceiver(port=first.port)) as second:
            sink.write([_batch([_event(2)], first=1)])
            assert [r.control_id for r in second.received] == [control_id_for(_event(2)["event_id"])]
    finally:
        sink.stop()


def test_event_without_rendering_is_rejected_before_sending(receiver: ScriptedReceiver) -> None:
    sink = _sink(receiver.port)
    try:
        with pytest.raises(SinkRejected, match=r"no HL7 v2 rendering for ORU\^R01") as info:
            sink.write([_batch([_event(1, event_type="ORU^R01")], partition=1, first=4)])
        assert info.value.offsets == [(1, 4)] and receiver.received == []
    finally:
        sink.stop()
