"""FHIR and webhook sinks against a real (in-process) HTTP server with FHIR REST semantics."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator

import orjson
import pytest

from connectors.sinks import SinkBatch, SinkConfigError, SinkRecord, SinkRejected, SinkRetryable, create_sink
from connectors.sinks.fhir import FhirSink, resource_id
from connectors.sinks.http import CircuitOpen
from connectors.sinks.webhook import WebhookSink
from tests.support.events import make_event
from tests.support.fhir_server import FhirTestServer
from topology.model import SinkSpec

TOPIC = "dest.fhir"


@pytest.fixture
def server() -> Iterator[FhirTestServer]:
    with FhirTestServer() as srv:
        yield srv


def _fhir(server: FhirTestServer, **options: object) -> FhirSink:
    sink = create_sink(SinkSpec(kind="fhir", options={"base_url": server.base_url, "retries": 2, **options}), "fhir")
    assert isinstance(sink, FhirSink)
    return sink


def _batch(*events: dict[str, object], partition: int = 0, first: int = 0) -> SinkBatch:
    return SinkBatch(TOPIC, partition, [SinkRecord(first + i, None, ev) for i, ev in enumerate(events)])


def test_fhir_puts_deterministic_ids_and_replays_are_no_ops(server: FhirTestServer) -> None:
    sink = _fhir(server)
    events = [make_event(i, "fhir") for i in range(3)]
    events.append(make_event(3, "fhir", resources=[{"resourceType": "Observation", "status": "final"}]))
    sink.write([_batch(*events)])
    assert server.transactions == 1
    assert ("Patient", "p0") in server.resources and ("Encounter", "e2") in server.resources
    obs_id = resource_id(events[3]["event_id"], 0, events[3]["resources"][0])  # type: ignore[index]
    assert server.resources[("Observation", obs_id)]["meta"]["source"].endswith(str(events[3]["event_id"]))
    before = dict(server.versions)

    sink.write([_batch(*events)])  # replay after a crash: same ids, same content
    assert server.versions == before and len(server.resources) == 7

    changed = make_event(0, "fhir", resources=[{"resourceType": "Patient", "id": "p0", "gender": "female"}])
    sink.write([_batch(changed, first=10)])
    assert server.versions[("Patient", "p0")] == 2


def test_fhir_same_resource_twice_in_a_batch_sends_newest_once(server: FhirTestServer) -> None:
    sink = _fhir(server)
    old = make_event(0, "fhir", resources=[{"resourceType": "Patient", "id": "p9", "gender": "male"}])
    new = make_event(1, "fhir", resources=[{"resourceType": "Patient", "id": "p9", "gender": "female"}])
    sink.write([_batch(old, new)])  # the server refuses duplicates inside one transaction
    assert server.resources[("Patient", "p9")]["gender"] == "female"


def test_fhir_transaction_is_all_or_nothing_and_rejection_is_pinned_on_single_events(
    server: FhirTestServer,
) -> None:
    sink = _fhir(server)
    bad = make_event(1, "fhir", resources=[{"resourceType": "Patient", "id": "bad", "gender": "bogus"}])
    with pytest.raises(SinkRejected) as info:
        sink.write([_batch(make_event(0, "fhir"), bad, make_event(2, "fhir"))])
    assert info.value.offsets == [] and server.resources == {}, "nothing of a rejected transaction is written"
    assert "gender" in str(info.value)
    with pytest.raises(SinkRejected) as one:
        sink.write([_batch(bad, first=1)])
    assert one.value.offsets == [(0, 1)]
    with pytest.raises(SinkRejected) as local:
        sink.write([_batch(make_event(5, "fhir", resources=[{"id": "x"}]), first=5)])
    assert local.value.offsets == [(0, 5)]


def test_fhir_retries_5xx_then_opens_the_circuit(server: FhirTestServer) -> None:
    sink = _fhir(server, breaker_failures=4, breaker_reset_s=60)
    server.fail_next(2, 503)
    sink.write([_batch(make_event(0, "fhir"))])  # two 503s absorbed by the in-call retries
    assert server.transactions == 1

    server.fail_next(100, 503)
    with pytest.raises(SinkRetryable):
        sink.write([_batch(make_event(1, "fhir"), first=1)])  # 3 attempts
    with pytest.raises(SinkRetryable):
        sink.write([_batch(make_event(1, "fhir"), first=1)])  # 4th failure opens the circuit
    calls = server.requests
    with pytest.raises(CircuitOpen):
        sink.write([_batch(make_event(1, "fhir"), first=1)])
    assert server.requests == calls, "an open circuit does not call the server"
    assert sink.health()["circuit"] == "open" and sink.health()["ok"] is False


def test_fhir_options_errors_name_the_key() -> None:
    with pytest.raises(SinkConfigError) as info:
        create_sink(SinkSpec(kind="fhir", options={"base_url": "ftp://x"}), "fhir")
    assert info.value.key == "sink.options.base_url"
    with pytest.raises(SinkConfigError) as info:
        create_sink(SinkSpec(kind="fhir", options={"base_url": "http://x", "bearer_token_env": "NOPE_UNSET_X"}), "f")
    assert info.value.key == "sink.options.bearer_token_env"


def test_webhook_idempotency_key_signature_and_4xx(server: FhirTestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", "s3cret")
    sink = create_sink(SinkSpec(kind="webhook", options={"url": server.hook_url, "secret_env": "HOOK_SECRET"}), "h")
    assert isinstance(sink, WebhookSink)
    events = [make_event(i, "h") for i in range(4)]
    sink.write([_batch(*events)])
    sink.write([_batch(*events[:2])])  # redelivery after a crash
    assert sorted(server.hook_accepted) == sorted(str(e["event_id"]) for e in events)
    assert server.hook_deliveries[str(events[0]["event_id"])] == 2

    server.fail_next(1, 429)
    reject = make_event(9, "h", event_type="REJECT")
    with pytest.raises(SinkRejected) as info:
        sink.write([_batch(events[3], reject, first=20)])
    assert info.value.offsets == [(0, 21)]

    body, signature = server.hook_last[str(events[0]["event_id"])]
    assert orjson.loads(body)["event_id"] == events[0]["event_id"]
    assert signature == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
