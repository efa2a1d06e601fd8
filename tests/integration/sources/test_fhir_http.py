"""The FHIR REST source against a real broker: commit-then-ack, every rejection, auth, TLS-free limits."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import aiohttp
import orjson
import pytest

from connectors.sources.base import create_source
from connectors.sources.fhir_http import DLQ_INGEST, FhirHttpOptions, FhirHttpSource
from schemas import headers as H
from schemas.envelope import event_id_for
from tests.support.topics import create_topics, read_all
from topology.model import SourceSpec
from topology.settings import KafkaSettings

FHIR = {"Content-Type": "application/fhir+json"}


def patient(mrn: str) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}],
            "name": [{"family": "Doe", "given": ["Jane"]}]}


def observation(ref: str) -> dict:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "hb"},
            "subject": {"reference": ref}}


async def _start(kafka_bootstrap: str, unique_name: Callable[[str], str], **opts: object) -> FhirHttpSource:
    name = unique_name("fh")
    topic = f"raw.fhir.{name}"
    create_topics(kafka_bootstrap, [topic, DLQ_INGEST], partitions=2)
    src = FhirHttpSource(name, topic, FhirHttpOptions(port=0, **opts), KafkaSettings(bootstrap_servers=kafka_bootstrap))
    await src.start()
    return src


@pytest.fixture
async def source(kafka_bootstrap: str, unique_name) -> AsyncIterator[FhirHttpSource]:
    src = await _start(kafka_bootstrap, unique_name, max_body_bytes=4096, max_depth=8)
    yield src
    await src.stop()


def url(src: FhirHttpSource, path: str) -> str:
    return f"http://127.0.0.1:{src.port}{path}"


def dlq_for(kafka_bootstrap: str, src: FhirHttpSource) -> list:
    return [m for m in read_all(kafka_bootstrap, DLQ_INGEST) if H.as_dict(m.headers()).get(H.SOURCE) == src.name]


async def test_resource_gets_201_after_the_record_is_on_the_topic(source: FhirHttpSource, kafka_bootstrap: str):
    bodies = [orjson.dumps(patient(f"MRN{i}")) for i in range(5)]
    async with aiohttp.ClientSession() as http:
        for body in bodies:
            async with http.post(url(source, "/fhir/Patient"), data=body, headers=FHIR) as resp:
                assert resp.status == 201
                echoed = await resp.json(content_type=None)
                assert resp.headers["Content-Type"].startswith("application/fhir+json")
        async with http.post(url(source, "/fhir/Observation"), data=orjson.dumps(observation("Patient/p1")),
                             headers={"Content-Type": "application/json; charset=utf-8"}) as resp:
            assert resp.status == 201
    assert echoed["resourceType"] == "Patient"
    assert echoed["meta"]["source"].startswith(f"urn:clinstream:{source.topic}/")
    records = read_all(kafka_bootstrap, source.topic, expect=6)
    assert len(records) == 6
    by_value = {r.value(): r for r in records}
    rec = by_value[bodies[0]]  # raw bytes unchanged
    h = H.as_dict(rec.headers())
    assert h[H.SOURCE] == source.name and h[H.EVENT_ID] == event_id_for(source.name, bodies[0]) and h[H.RECEIVED_AT]
    assert rec.key() == b"urn:mrn|MRN0"
    assert {r.key() for r in records} >= {b"Patient/p1"}


async def test_bundles_and_notifications_get_202(source: FhirHttpSource, kafka_bootstrap: str):
    bundles = [
        {"resourceType": "Bundle", "type": t, "entry": [{"resource": patient("B1")}, {"resource": observation("x")}]}
        for t in ("batch", "transaction", "message", "collection")
    ]
    r5_note = {"resourceType": "Bundle", "type": "subscription-notification",
               "entry": [{"resource": {"resourceType": "SubscriptionStatus", "type": "event-notification"}},
                         {"resource": observation("Patient/n1")}]}
    r4_backport = {"resourceType": "Bundle", "type": "history",
                   "entry": [{"resource": {"resourceType": "Parameters", "parameter": [
                       {"name": "type", "valueCode": "event-notification"}]}}]}
    async with aiohttp.ClientSession() as http:
        for b in bundles:
            async with http.post(url(source, "/fhir"), data=orjson.dumps(b), headers=FHIR) as resp:
                assert resp.status == 202
                oo = await resp.json(content_type=None)
                assert oo["resourceType"] == "OperationOutcome" and oo["issue"][0]["severity"] == "information"
        for note in (r5_note, r4_backport):
            async with http.post(url(source, "/fhir/subscription-hook"), data=orjson.dumps(note),
                                 headers=FHIR) as resp:
                assert resp.status == 202
        # R4 "empty" payload: the headers are the notification
        async with http.post(url(source, "/fhir/subscription-hook"),
                             headers={"X-Subscription-Id": "sub-1", "Authorization": "x"}) as resp:
            assert resp.status == 202
    records = read_all(kafka_bootstrap, source.topic, expect=7)
    assert len(records) == 7
    empty = [r for r in records if H.as_dict(r.headers()).get("clinstream-notification") == "empty"]
    assert len(empty) == 1
    params = orjson.loads(empty[0].value())
    assert {"name": "header", "valueString": "X-Subscription-Id: sub-1"} in params["parameter"]
    assert b"Authorization" not in empty[0].value()
    assert sum(r.key() == b"urn:mrn|B1" for r in records) == 4  # bundles keyed by their Patient entry


REJECTIONS = [
    # path, body, content type, status, error class, text the OperationOutcome must contain
    ("/fhir/Patient", b'{"resourceType": "Patient", "name": [', "application/fhir+json", 400, "InvalidJson",
     "invalid JSON at char"),
    ("/fhir/Patient", b"[" * 20 + b"]" * 20, "application/fhir+json", 400, "TooDeeplyNested", "max_depth=8"),
    ("/fhir/Patient", b'{"name": "no type"}', "application/fhir+json", 422, "NotAFhirResource", "no resourceType"),
    ("/fhir/Patient", orjson.dumps(observation("p")), "application/fhir+json", 400, "WrongResourceType",
     "does not match the URL"),
    ("/fhir", orjson.dumps({"resourceType": "Bundle", "type": "searchset"}), "application/fhir+json", 400,
     "WrongResourceType", "Bundle.type"),
    ("/fhir/subscription-hook", orjson.dumps({"resourceType": "Bundle", "type": "history", "entry": []}),
     "application/fhir+json", 422, "NotAFhirResource", "SubscriptionStatus"),
    ("/fhir/Observation", orjson.dumps(patient("X")), "text/plain", 415, "UnsupportedMediaType", "text/plain"),
    ("/fhir/Encounter", b'{"resourceType":"Patient","text":"' + b"a" * 5000 + b'"}', "application/fhir+json", 413,
     "BodyTooLarge", "max_body_bytes=4096"),
]


async def test_rejections_get_operation_outcome_and_a_dlq_record(source: FhirHttpSource, kafka_bootstrap: str):
    async with aiohttp.ClientSession() as http:
        for path, body, ctype, status, _, needle in REJECTIONS:
            async with http.post(url(source, path), data=body, headers={"Content-Type": ctype}) as r:
                assert r.status == status, path
                oo = await r.json(content_type=None)
            assert oo["resourceType"] == "OperationOutcome"
            assert oo["issue"][0]["severity"] == "error" and needle in oo["issue"][0]["diagnostics"]
    dlq = {}
    for m in dlq_for(kafka_bootstrap, source):
        h = H.as_dict(m.headers())
        dlq[(h[H.ERROR_CLASS], h["http-path"])] = (h, m.value())
    assert len(dlq) == len(REJECTIONS)
    for path, body, _, status, error_class, needle in REJECTIONS:
        h, value = dlq[(error_class, path)]
        assert h[H.ERROR_STAGE] == "ingest" and needle in h[H.ERROR_MESSAGE] and h[H.ORIGIN_TOPIC] == source.topic
        if status == 413:
            assert h["truncated"] == "true" and len(value) <= 4096
        else:
            assert value == body  # the refused bytes are kept as sent
    assert read_all(kafka_bootstrap, source.topic) == []


async def test_streamed_oversize_without_content_length(source: FhirHttpSource, kafka_bootstrap: str):
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000

    async with aiohttp.ClientSession() as http:
        async with http.post(url(source, "/fhir/Patient"), data=chunks(), headers=FHIR) as r:
            assert r.status == 413
            assert "streamed" in (await r.json(content_type=None))["issue"][0]["diagnostics"]
    assert len(dlq_for(kafka_bootstrap, source)) == 1


async def _raw_request(port: int, head: bytes, timeout: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), timeout)
    finally:
        writer.close()


async def test_declared_oversize_is_refused_before_the_body_is_sent(source: FhirHttpSource):
    # only headers are sent: the answer must come without the server waiting for 1 MB
    resp = await _raw_request(source.port, b"POST /fhir/Patient HTTP/1.1\r\nHost: x\r\n"
                                           b"Content-Type: application/fhir+json\r\nContent-Length: 1000000\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 413") and b"max_body_bytes=4096" in resp


async def test_bearer_auth_refuses_before_reading_the_body(kafka_bootstrap: str, unique_name, monkeypatch):
    env = f"FHIR_TOKEN_{uuid.uuid4().hex[:6].upper()}"
    monkeypatch.setenv(env, "s3cret")
    src = await _start(kafka_bootstrap, unique_name, auth_token_env=env)
    try:
        # headers only, body never sent: a 401 proves auth ran before any body read
        resp = await _raw_request(src.port, b"POST /fhir/Patient HTTP/1.1\r\nHost: x\r\n"
                                            b"Content-Type: application/fhir+json\r\nContent-Length: 500\r\n\r\n")
        assert resp.startswith(b"HTTP/1.1 401") and b"OperationOutcome" in resp and b"WWW-Authenticate" in resp
        # Expect: 100-continue: refused before the client is even invited to send the body
        resp = await _raw_request(src.port, b"POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                                            b"Content-Type: application/fhir+json\r\nContent-Length: 500\r\n\r\n")
        assert resp.startswith(b"HTTP/1.1 401") and b"100 Continue" not in resp
        resp = await _raw_request(src.port, b"POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                                            b"Authorization: Bearer s3cret\r\n"
                                            b"Content-Type: application/fhir+json\r\nContent-Length: 500\r\n\r\n")
        assert resp.startswith(b"HTTP/1.1 100 Continue")
        async with aiohttp.ClientSession() as http:
            body = orjson.dumps(patient("A1"))
            async with http.post(url(src, "/fhir/Patient"), data=body,
                                 headers={**FHIR, "Authorization": "Bearer wrong"}) as r:
                assert r.status == 401
            async with http.post(url(src, "/fhir/Patient"), data=body,
                                 headers={**FHIR, "Authorization": "Bearer s3cret"}) as r:
                assert r.status == 201
            async with http.get(url(src, "/healthz")) as r:
                health = await r.json()
        assert health["accepted"] == 1 and health["rejected"] == {"401": 3}
        assert len(read_all(kafka_bootstrap, src.topic, expect=1)) == 1
        assert dlq_for(kafka_bootstrap, src) == []  # unauthenticated bytes are not kept
    finally:
        await src.stop()


async def test_registered_as_fhir_http_kind(kafka_bootstrap: str, monkeypatch):
    spec = SourceSpec(name="reg", kind="fhir-http", format="fhir", options={"port": 0})
    src = create_source(spec, KafkaSettings(bootstrap_servers=kafka_bootstrap))
    assert isinstance(src, FhirHttpSource) and src.topic == "raw.fhir.reg"
    monkeypatch.delenv("NOPE_TOKEN", raising=False)
    bad = SourceSpec(name="reg", kind="fhir-http", format="fhir", options={"auth_token_env": "NOPE_TOKEN"})
    with pytest.raises(Exception, match="NOPE_TOKEN"):
        create_source(bad, KafkaSettings(bootstrap_servers=kafka_bootstrap))
