"""FHIR REST ingest source (``kind: fhir-http``) with commit-then-ack.

Endpoints (under ``options.base_path``, default ``/fhir``):

- ``POST /fhir/<ResourceType>``: one resource -> 201 + the resource (with ``meta``
  telling where it was persisted) once Kafka has durably accepted it.
- ``POST /fhir``: a Bundle (batch, transaction, message, collection) -> 202 +
  ``OperationOutcome``.
- ``POST /fhir/subscription-hook``: a FHIR Subscription rest-hook notification,
  either a ``subscription-notification`` Bundle (R4B/R5 and the R4 backport IG
  on R4B) or an R4-backport ``history`` Bundle whose first entry is the
  ``SubscriptionStatus`` Parameters, or an empty body (R4 ``payload`` absent:
  the notification is only its headers) -> 202.
- ``GET /healthz``: liveness/readiness with counters (no auth, no PHI).

The raw bytes go to ``raw.fhir.<source>`` unchanged; nothing is validated beyond
what the answer needs (JSON well-formed, a FHIR resource of the expected type).
Every rejection is a 4xx with an ``OperationOutcome`` naming the problem, and the
rejected body is kept on ``dlq.ingest`` with origin headers. Checks are ordered
cheapest first so a hostile sender cannot make us do work: auth (before the body
is read), declared size, content type, streamed size, nesting depth (byte scan),
then JSON parsing.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from connectors.sources.base import (
    DLQ_INGEST,
    SourceConfigError,
    ingest_rejection_headers,
    parse_options,
    register_source,
    server_ssl_context,
)
from schemas import headers as H
from schemas.envelope import event_id_for, utc_now_iso
from topology.model import SourceSpec
from topology.producer import DeliveryError, DurableProducer
from topology.settings import KafkaSettings

log = logging.getLogger(__name__)
FHIR_JSON = "application/fhir+json"
ACCEPTED_TYPES = frozenset({"application/fhir+json", "application/json", "application/json+fhir"})
BUNDLE_TYPES = frozenset({"batch", "transaction", "message", "collection"})
NOTIFICATION_TYPES = frozenset({"subscription-notification", "history"})
# request headers that describe an empty-body notification (never the Authorization header)
_HOOK_HEADER_RE = re.compile(r"^(x-|content-type$|user-agent$|subscription)", re.I)


class FhirHttpOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    base_path: str = Field(default="/fhir", pattern=r"^/[A-Za-z0-9/_-]*$")
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_depth: int = Field(default=64, ge=4, le=10_000)
    max_concurrent_requests: int = Field(default=256, ge=1)
    keepalive_timeout_s: float = Field(default=75.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0, description="time allowed to receive a whole body")
    max_header_bytes: int = Field(default=8190, ge=1024, description="max request line / header field size")
    max_headers: int = Field(default=128, ge=8)
    auth_token_env: str | None = Field(default=None, description="env var holding the bearer token to require")
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = Field(default=None, description="CA bundle; set to require client certificates")


# --- pure helpers (no I/O) ----------------------------------------------------

class FhirRejection(Exception):
    """A request refused with a 4xx and an OperationOutcome."""

    status = 400
    code = "invalid"  # OperationOutcome.issue.code (FHIR issue-type)

    def __init__(self, message: str, *, expression: str | None = None) -> None:
        super().__init__(message)
        self.expression = expression


class Unauthorized(FhirRejection):
    status, code = 401, "login"


class BodyTooLarge(FhirRejection):
    status, code = 413, "too-long"
    head: bytes = b""  # what was read before the limit tripped (kept on the DLQ, marked truncated)


class UnsupportedMediaType(FhirRejection):
    status, code = 415, "not-supported"


class TooDeeplyNested(FhirRejection):
    status, code = 400, "too-costly"


class InvalidJson(FhirRejection):
    status, code = 400, "structure"


class NotAFhirResource(FhirRejection):
    status, code = 422, "structure"


class WrongResourceType(FhirRejection):
    status, code = 400, "invalid"


_STRING_RE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(body: bytes) -> int:
    """Maximum bracket/brace nesting of a JSON text, without parsing it.

    Strings are removed first (C-speed regex), then everything but brackets is
    deleted (``bytes.translate``), so the Python loop runs once per bracket only.
    A broken document still yields a number; ``orjson`` reports the breakage.
    """
    structural = _STRING_RE.sub(b"", body).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for ch in structural:
        if ch in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
        else:
            depth -= 1
    return deepest


def parse_json(body: bytes, max_depth: int) -> Any:
    depth = json_depth(body)
    if depth > max_depth:
        raise TooDeeplyNested(f"JSON nesting depth {depth} exceeds max_depth={max_depth}")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(f"invalid JSON at char {exc.pos} (line {exc.lineno}, column {exc.colno}): {exc.msg}") from exc


def require_resource(doc: Any, expected: str | None = None) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise NotAFhirResource(f"not a FHIR resource: expected a JSON object, got {type(doc).__name__}")
    rtype = doc.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise NotAFhirResource("not a FHIR resource: no resourceType", expression="resourceType")
    if expected is not None and rtype != expected:
        raise WrongResourceType(
            f"resourceType {rtype!r} does not match the URL (expected {expected!r})", expression="resourceType"
        )
    return doc


def require_bundle(doc: Any, allowed: frozenset[str]) -> dict[str, Any]:
    bundle = require_resource(doc, "Bundle")
    btype = bundle.get("type")
    if btype not in allowed:
        raise WrongResourceType(
            f"Bundle.type {btype!r} not accepted here (expected one of: {', '.join(sorted(allowed))})",
            expression="Bundle.type",
        )
    return bundle


def require_notification(doc: Any) -> dict[str, Any]:
    """A Subscription notification Bundle in either shape the R4 backport IG allows."""
    bundle = require_bundle(doc, NOTIFICATION_TYPES)
    entries = bundle.get("entry") or []
    first = entries[0].get("resource") if entries and isinstance(entries[0], dict) else None
    status_type = first.get("resourceType") if isinstance(first, dict) else None
    if status_type not in ("SubscriptionStatus", "Parameters"):
        raise NotAFhirResource(
            "notification Bundle must start with a SubscriptionStatus (R4B/R5) or its Parameters form (R4 backport)",
            expression="Bundle.entry[0].resource",
        )
    return bundle


def _reference_key(resource: dict[str, Any]) -> bytes | None:
    if resource.get("resourceType") == "Patient":
        for ident in resource.get("identifier") or ():
            if isinstance(ident, dict) and ident.get("value"):
                return f"{ident.get('system') or ''}|{ident['value']}".encode()
        if resource.get("id"):
            return f"Patient/{resource['id']}".encode()
        return None
    for name in ("subject", "patient", "beneficiary"):
        ref = resource.get(name)
        if isinstance(ref, dict):
            if isinstance(ref.get("reference"), str) and ref["reference"]:
                return ref["reference"].encode()
            ident = ref.get("identifier")
            if isinstance(ident, dict) and ident.get("value"):
                return f"{ident.get('system') or ''}|{ident['value']}".encode()
    return None


def patient_key(doc: dict[str, Any]) -> bytes | None:
    """The patient a resource or bundle is about, if cheaply visible (partition key before identity)."""
    if doc.get("resourceType") != "Bundle":
        return _reference_key(doc)
    entries = [e.get("resource") for e in doc.get("entry") or () if isinstance(e, dict)]
    resources = [r for r in entries if isinstance(r, dict)]
    for r in resources:
        if r.get("resourceType") == "Patient":
            return _reference_key(r)
    for r in resources:
        key = _reference_key(r)
        if key:
            return key
    return None


def operation_outcome(severity: str, code: str, diagnostics: str, expression: str | None = None) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


# --- the server ----------------------------------------------------------------

@dataclass
class FhirHttpStats:
    received: int = 0
    accepted: int = 0
    rejected: dict[int, int] = field(default_factory=dict)
    dlq: int = 0
    unavailable: int = 0


class FhirHttpSource:
    """An aiohttp server persisting FHIR resources, bundles and notifications before answering."""

    def __init__(
        self,
        name: str,
        topic: str,
        options: FhirHttpOptions,
        settings: KafkaSettings,
        producer: DurableProducer | None = None,
    ) -> None:
        self.name = name
        self.topic = topic
        self.options = options
        self.settings = settings
        self._producer = producer
        self._own_producer = producer is None
        self._runner: web.AppRunner | None = None
        self._slots = asyncio.Semaphore(options.max_concurrent_requests)
        self._token = self._load_token()
        self.stats = FhirHttpStats()

    def _load_token(self) -> bytes | None:
        env = self.options.auth_token_env
        if env is None:
            return None
        token = os.environ.get(env)
        if not token:
            # fail closed: an auth-configured source must not start open
            raise SourceConfigError(f"sources[{self.name}].options.auth_token_env: env var {env!r} is not set")
        return token.encode()

    @property
    def port(self) -> int:
        if self._runner is None or not self._runner.addresses:
            return self.options.port
        return int(self._runner.addresses[0][1])

    @property
    def scheme(self) -> str:
        return "https" if self.options.tls_cert else "http"

    def app(self) -> web.Application:
        base = self.options.base_path.rstrip("/")
        app = web.Application(middlewares=[self._guard], client_max_size=self.options.max_body_bytes)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_post(f"{base}/subscription-hook", self._hook, expect_handler=self._expect)
        app.router.add_post(f"{base}/{{rtype:[A-Z][A-Za-z]*}}", self._resource, expect_handler=self._expect)
        app.router.add_post(base or "/", self._bundle, expect_handler=self._expect)
        return app

    async def start(self) -> None:
        if self._producer is None:
            self._producer = DurableProducer(self.settings)
        o = self.options
        self._runner = web.AppRunner(
            self.app(),
            access_log=None,  # access lines carry resource ids in URLs; request counts are in health()
            keepalive_timeout=o.keepalive_timeout_s,
            max_line_size=o.max_header_bytes,
            max_field_size=o.max_header_bytes,
            max_headers=o.max_headers,
        )
        await self._runner.setup()
        tls = server_ssl_context(o.tls_cert, o.tls_key, o.tls_client_ca)
        site = web.TCPSite(self._runner, o.host, o.port, ssl_context=tls)
        await site.start()
        log.info("FHIR source %s listening on %s://%s:%d%s -> %s",
                 self.name, self.scheme, o.host, self.port, o.base_path, self.topic)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._producer is not None and self._own_producer:
            await asyncio.to_thread(self._producer.close)
            self._producer = None

    def health(self) -> dict[str, Any]:
        return {
            "listening": self._runner is not None,
            "port": self.port,
            "received": self.stats.received,
            "accepted": self.stats.accepted,
            "rejected": {str(k): v for k, v in self.stats.rejected.items()},
            "dlq": self.stats.dlq,
        }

    # -- cross-cutting checks --------------------------------------------------

    def _check_auth(self, request: web.BaseRequest) -> None:
        if self._token is None:
            return
        given = request.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._token):
            raise Unauthorized("missing or invalid bearer token")

    def _check_declared_size(self, request: web.BaseRequest) -> None:
        length = request.content_length
        if length is not None and length > self.options.max_body_bytes:
            raise BodyTooLarge(
                f"body of {length} bytes (Content-Length) exceeds max_body_bytes={self.options.max_body_bytes}"
            )

    async def _expect(self, request: web.Request) -> None:
        # ``Expect: 100-continue``: refuse before the client even sends the body
        try:
            self._check_auth(request)
            self._check_declared_size(request)
        except FhirRejection as exc:
            raise self._http_error(exc) from None
        if request.version >= (1, 1):
            request.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/healthz":
            return await handler(request)
        if self._slots.locked():
            self.stats.unavailable += 1
            return self._outcome_response(
                503, operation_outcome("error", "throttled", "too many concurrent requests; retry later"),
                headers={"Retry-After": "1"},
            )
        async with self._slots:
            self.stats.received += 1
            try:
                self._check_auth(request)  # before a single body byte is read
            except Unauthorized as exc:
                return self._reject_response(exc, {"WWW-Authenticate": 'Bearer realm="clinstream"'})
            return await handler(request)

    def _http_error(self, exc: FhirRejection) -> web.HTTPException:
        self.stats.rejected[exc.status] = self.stats.rejected.get(exc.status, 0) + 1
        return _status_error(exc.status, orjson.dumps(operation_outcome("error", exc.code, str(exc), exc.expression)))

    def _reject_response(self, exc: FhirRejection, headers: dict[str, str] | None = None) -> web.Response:
        self.stats.rejected[exc.status] = self.stats.rejected.get(exc.status, 0) + 1
        return self._outcome_response(
            exc.status, operation_outcome("error", exc.code, str(exc), exc.expression), headers=headers
        )

    @staticmethod
    def _outcome_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(status=status, body=orjson.dumps(body), content_type=FHIR_JSON, headers=headers)

    async def _read_body(self, request: web.Request, allow_empty: bool = False) -> bytes:
        """Size-checked body read: declared length first, then the streamed count (chunked senders)."""
        self._check_declared_size(request)
        limit = self.options.max_body_bytes
        chunks: list[bytes] = []
        size = 0

        async def pump() -> None:
            nonlocal size
            async for chunk in request.content.iter_chunked(65536):
                size += len(chunk)
                if size > limit:
                    err = BodyTooLarge(f"body exceeds max_body_bytes={limit} (streamed)")
                    err.head = b"".join(chunks)
                    raise err
                chunks.append(chunk)

        try:
            await asyncio.wait_for(pump(), self.options.read_timeout_s)
        except TimeoutError:
            raise FhirRejection(f"body not received within read_timeout_s={self.options.read_timeout_s}") from None
        body = b"".join(chunks)
        if not body and not allow_empty:
            raise InvalidJson("empty body")
        return body

    def _check_content_type(self, request: web.Request) -> None:
        ctype = request.content_type  # without parameters, lower-cased by aiohttp
        if ctype not in ACCEPTED_TYPES:
            raise UnsupportedMediaType(
                f"content type {ctype!r} not supported (send {FHIR_JSON} or application/json)"
            )

    # -- handlers --------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response(self.health(), dumps=lambda o: orjson.dumps(o).decode())

    async def _resource(self, request: web.Request) -> web.StreamResponse:
        expected = request.match_info["rtype"]
        return await self._ingest(request, lambda doc: require_resource(doc, expected), status=201)

    async def _bundle(self, request: web.Request) -> web.StreamResponse:
        return await self._ingest(request, lambda doc: require_bundle(doc, BUNDLE_TYPES), status=202)

    async def _hook(self, request: web.Request) -> web.StreamResponse:
        if request.content_length == 0 or (request.content_length is None and not request.body_exists):
            return await self._empty_notification(request)
        return await self._ingest(request, require_notification, status=202)

    async def _ingest(self, request: web.Request, check: Any, status: int) -> web.StreamResponse:
        received_at = utc_now_iso()
        body = b""
        try:
            self._check_declared_size(request)
            try:
                self._check_content_type(request)
            except UnsupportedMediaType:
                # still read (size-limited) so the refused bytes are kept on the DLQ
                body = await self._read_body(request, allow_empty=True)
                raise
            body = await self._read_body(request)
            doc = check(parse_json(body, self.options.max_depth))
        except FhirRejection as exc:
            truncated = isinstance(exc, BodyTooLarge)
            payload = exc.head if isinstance(exc, BodyTooLarge) else body
            await self._to_dlq(request, payload, exc, received_at, truncated)
            return self._reject_response(exc)
        return await self._persist(body, patient_key(doc), received_at, status, doc)

    async def _empty_notification(self, request: web.Request) -> web.StreamResponse:
        # R4 rest-hook with no payload: the notification *is* the request. Persist a
        # small Parameters resource describing it (headers minus credentials, arrival
        # time) so it is ordered, replayable and distinct from the next ping.
        received_at = utc_now_iso()
        params = [{"name": "notification-shape", "valueCode": "empty"},
                  {"name": "received-at", "valueInstant": received_at}]
        for name, value in request.headers.items():
            if _HOOK_HEADER_RE.match(name) and name.lower() != "authorization":
                params.append({"name": "header", "valueString": f"{name}: {value}"})
        body = orjson.dumps({"resourceType": "Parameters", "parameter": params})
        return await self._persist(body, None, received_at, 202, None, extra=[("clinstream-notification", "empty")])

    async def _persist(
        self,
        body: bytes,
        key: bytes | None,
        received_at: str,
        status: int,
        doc: dict[str, Any] | None,
        extra: list[tuple[str, str]] | None = None,
    ) -> web.StreamResponse:
        event_id = event_id_for(self.name, body)
        hdrs = H.encode([
            (H.SOURCE, self.name),
            (H.EVENT_ID, event_id),
            (H.RECEIVED_AT, received_at),
            (H.TRACEPARENT, H.traceparent_for(event_id)),
            *(extra or ()),
        ])
        try:
            assert self._producer is not None
            partition, offset = await self._producer.send(self.topic, body, key=key, headers=hdrs)
        except DeliveryError as exc:
            log.error("FHIR source %s: not persisted (%s); answering 503 so the sender retries", self.name, exc)
            self.stats.unavailable += 1
            return self._outcome_response(
                503, operation_outcome("error", "transient", "could not be persisted; retry"),
                headers={"Retry-After": "1"},
            )
        self.stats.accepted += 1
        where = f"{self.topic}/{partition}/{offset}"
        resp_headers = {"X-Clinstream-Event-Id": event_id}
        if status == 201 and doc is not None:
            # echo the resource with meta saying where it lives now (as a FHIR server would)
            meta = dict(doc.get("meta") or {})
            meta["lastUpdated"] = received_at
            meta["source"] = f"urn:clinstream:{where}"
            meta.setdefault("tag", [])
            meta["tag"] = [*meta["tag"], {"system": "urn:clinstream:event-id", "code": event_id}]
            echoed = {**doc, "meta": meta}
            return web.Response(status=201, body=orjson.dumps(echoed), content_type=FHIR_JSON, headers=resp_headers)
        return self._outcome_response(
            status,
            operation_outcome("information", "informational", f"accepted as event {event_id} ({where})"),
            headers=resp_headers,
        )

    async def _to_dlq(
        self, request: web.Request, payload: bytes, exc: FhirRejection, received_at: str, truncated: bool
    ) -> None:
        peer = request.remote or "?"
        extra = [
            ("origin-peer", peer),
            ("http-path", request.path),
            ("http-status", str(exc.status)),
            ("content-type", request.headers.get("Content-Type", "")),
        ]
        if truncated:
            extra.append(("truncated", "true"))
        hdrs = ingest_rejection_headers(source=self.name, raw_topic=self.topic, reason=str(exc),
                                        error_class=type(exc).__name__, received_at=received_at, extra=extra)
        try:
            assert self._producer is not None
            await self._producer.send(DLQ_INGEST, payload, headers=hdrs)
            self.stats.dlq += 1
        except DeliveryError:
            log.error("FHIR source %s: could not write rejected body to %s", self.name, DLQ_INGEST)


def _status_error(status: int, body: bytes) -> web.HTTPException:
    text = body.decode()
    if status == 413:
        return web.HTTPRequestEntityTooLarge(max_size=0, actual_size=0, text=text, content_type=FHIR_JSON)
    cls = {401: web.HTTPUnauthorized}.get(status, web.HTTPBadRequest)
    return cls(text=text, content_type=FHIR_JSON)


@register_source("fhir-http")
def _create(spec: SourceSpec, settings: KafkaSettings) -> FhirHttpSource:
    return FhirHttpSource(spec.name, spec.raw_topic, parse_options(FhirHttpOptions, spec), settings)
