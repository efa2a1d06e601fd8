"""MLLP sink behind the SinkRunner on the real broker, delivering to a real MLLP receiver:
ordered delivery, AE and unrenderable events to dlq.sink, a timed-out ACK resent with the
same control id and filed once, and a replay that the receiver drops as duplicates."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.sinks.base import SinkBatch, SinkRecord
from connectors.sinks.errors import SinkRetryable
from connectors.sinks.mllp import MllpSink
from connectors.sinks.mllp_receiver import ReceiverThread
from connectors.sinks.mllp_render import control_id_for
from connectors.sinks.registry import create_sink
from connectors.sinks.runner import SinkRunner
from schemas.headers import as_dict
from tests.integration.sinks.conftest import Dest
from tests.integration.sources.test_tls import Pki, pki  # noqa: F401 - the throwaway PKI fixture, shared
from tests.support.events import RunnerThread, consume_all, make_event, produce, wait_until
from tests.support.mllp import ScriptedReceiver
from topology.model import SinkSpec


def _event(i: int, dest: str, mrn: str, **overrides: Any) -> dict[str, Any]:
    patient = {"resourceType": "Patient", "id": f"p{i}", "gender": "female",
               "identifier": [{"system": "urn:clinstream:v2:ns:GENHOSP", "value": mrn}],
               "name": [{"family": f"Test{i}", "given": ["Pat"]}]}
    encounter = {"resourceType": "Encounter", "id": f"e{i}", "status": "in-progress",
                 "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                 "period": {"start": "2024-05-01T08:00:00Z"}}
    return make_event(i, dest, resources=[patient, encounter], **overrides)


def test_mllp_sink_through_runner(dest: Dest, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    events = [_event(i, dest.name, f"MRN{i:04d}") for i in range(30)]
    rejected = _event(100, dest.name, "REJECT-100")
    slow = _event(101, dest.name, "SLOW-101")
    lab = _event(102, dest.name, "MRN0102", event_type="ORU^R01")
    stream = [*events[:10], rejected, *events[10:20], slow, lab, *events[20:]]
    # One key: one partition, so the order the receiver sees is the topic's order.
    produce(dest.bootstrap, dest.topic, stream, key=lambda i: b"one-patient")
    delivered = [*events[:10], *events[10:20], slow, *events[20:]]
    out = tmp_path / "legacy.ndjson"

    with ReceiverThread(ScriptedReceiver(out_path=out, slow_s=1.5)) as receiver:
        def runner(group: str) -> SinkRunner:
            spec = SinkSpec(kind="mllp", options={
                "host": "127.0.0.1", "port": receiver.port, "ack_timeout_s": 0.5, "max_attempts": 3,
                "retry_backoff_s": 0.05, "sending_facility": "HUB", "receiving_app": "LEGACY"})
            sink = create_sink(spec, dest.name)
            return SinkRunner(sink, topic=dest.topic, settings=dest.settings, group_id=group, poll_timeout_s=0.2,
                              initial_backoff_s=0.05)

        with RunnerThread(runner(unique_name("g"))) as rt:
            wait_until(lambda: (rt.check(), receiver.accepted >= len(delivered))[1], 60, "all ADT messages")
            wait_until(lambda: rt.runner.stats.dlq == 2, 10, "the AE'd and the ORU event in the DLQ")
            wait_until(lambda: receiver.arrivals(control_id_for(slow["event_id"])) == 2, 5, "the late first ACK")
            health = rt.runner.sink.health()
        assert rt.result.delivered == len(delivered)
        assert health["resent"] == 1 and health["delivered"] == len(delivered)

        filed = [orjson.loads(line) for line in out.read_bytes().splitlines()]
        assert [f["control_id"] for f in filed] == [control_id_for(e["event_id"]) for e in delivered]
        assert receiver.arrivals(control_id_for(rejected["event_id"])) == 1
        assert all(r.control_id != control_id_for(lab["event_id"]) for r in receiver.received)
        assert "|HUB|LEGACY|" in filed[0]["message"] and "PID|1||MRN0000^^^GENHOSP|" in filed[0]["message"]

        # A replay from the start (fresh group, e.g. after losing the group's offsets) resends
        # everything with the same control ids: the receiver ACKs and drops them.
        before = receiver.accepted
        with RunnerThread(runner(unique_name("g"))) as rt2:
            wait_until(lambda: (rt2.check(), rt2.runner.stats.delivered >= len(delivered))[1], 60, "replay")
        assert receiver.accepted == before
        assert len(out.read_bytes().splitlines()) == len(delivered)

    dlq = consume_all(dest.bootstrap, "dlq.sink", expected=2, group=unique_name("dlq"),
                      match=lambda m: as_dict(m.headers()).get("origin-topic") == dest.topic)
    by_event = {as_dict(m.headers())["clinstream-event-id"]: as_dict(m.headers()) for m in dlq[:2]}
    ae = by_event[rejected["event_id"]]
    assert ae["error-class"] == "SinkRejected" and ae["origin-offset"] == "10" and ae["origin-partition"]
    assert "answered AE" in ae["error-message"] and "Unknown patient identifier REJECT" in ae["error-message"]
    oru = by_event[lab["event_id"]]
    assert oru["origin-offset"] == "22" and "no HL7 v2 rendering for ORU^R01" in oru["error-message"]


def _server_ctx(certs: Pki, client_ca: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(certs.server_cert), str(certs.server_key))
    if client_ca:
        ctx.load_verify_locations(str(certs.ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _tls_sink(port: int, **tls: str) -> MllpSink:
    sink = create_sink(SinkSpec(kind="mllp", options={
        "host": "127.0.0.1", "port": port, "ack_timeout_s": 2, "max_attempts": 1, "tls": tls}), "legacy")
    assert isinstance(sink, MllpSink)
    return sink


def test_mllp_sink_over_mutual_tls(request: pytest.FixtureRequest) -> None:
    """Client certificate + CA options; an untrusted server or a missing client cert is retryable."""
    certs: Pki = request.getfixturevalue("pki")
    ev = _event(1, "legacy", "MRN0001")
    with ReceiverThread(ScriptedReceiver(ssl_context=_server_ctx(certs, client_ca=True))) as receiver:
        sink = _tls_sink(receiver.port, ca=str(certs.ca), cert=str(certs.client_cert), key=str(certs.client_key))
        try:
            sink.write([SinkBatch("dest.legacy", 0, [SinkRecord(0, None, ev)])])
        finally:
            sink.stop()
        assert [r.control_id for r in receiver.received] == [control_id_for(ev["event_id"])]

        untrusting = _tls_sink(receiver.port, ca=str(certs.other_ca), cert=str(certs.client_cert),
                               key=str(certs.client_key))
        without_cert = _tls_sink(receiver.port, ca=str(certs.ca))
        for sink in (untrusting, without_cert):
            try:
                with pytest.raises(SinkRetryable):
                    sink.write([SinkBatch("dest.legacy", 0, [SinkRecord(1, None, _event(2, "legacy", "MRN2"))])])
            finally:
                sink.stop()
        assert len(receiver.received) == 1
