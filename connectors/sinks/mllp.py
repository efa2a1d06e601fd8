"""MLLP sink: send each event as an HL7 v2 ADT message to a legacy receiver and wait for its ACK.

Exactly-once effect by idempotence, like the webhook sink: MSH-10 (message control id) is
derived from the event id (see ``mllp_render``), and **the receiver is assumed to drop a
message whose control id it has already accepted** — the standard HL7 duplicate check of
interface engines (Mirth, Rhapsody, Cloverleaf and most EHR inbound interfaces). So resends
after a timeout, a runner retry or a crash are harmless, offsets come from the consumer
group (``stores_offsets = False``) and the runner commits them after each write.

Per record, in partition order, over one persistent connection:

- AA / CA → delivered;
- AE / AR / CE / CR → ``SinkRejected`` naming just that record: the runner puts it on
  ``dlq.sink`` (the ACK's MSA/ERR text in ``error-message``) and carries on;
- ACK timeout, connection error or unreadable ACK → drop the connection (a late ACK must
  not be taken for the next message's) and resend the *same bytes* on a new one, up to
  ``max_attempts`` with backoff + jitter, then ``SinkRetryable`` (the runner retries the
  batch later, never committing). A circuit breaker stops reconnect storms;
- an event with no v2 rendering (not ADT, no Patient left after projection, merges) →
  ``SinkRejected`` with reason "no HL7 v2 rendering for <type>".

The runner is synchronous, the MLLP client asyncio: the sink owns a private event loop on
which the connection lives, driven from the runner's thread.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field

from connectors.sinks.base import Sink, SinkBatch, SinkOptions
from connectors.sinks.errors import SinkConfigError, SinkRejected, SinkRetryable
from connectors.sinks.http import CircuitBreaker, backoff_delay
from connectors.sinks.mllp_render import Header, Rendered, RenderError, render_event
from connectors.sinks.registry import register_sink
from connectors.sources.mllp.client import MllpClient, MllpClientError
from connectors.sources.mllp.framing import frame
from schemas.hl7v2.ack import ack_code_of
from schemas.hl7v2.errors import Hl7ParseError
from schemas.hl7v2.parser import parse_message

log = logging.getLogger(__name__)

ACCEPTED = frozenset({"AA", "CA"})
_TRANSPORT_ERRORS = (OSError, TimeoutError, MllpClientError, Hl7ParseError)
T = TypeVar("T")


class MllpTlsOptions(SinkOptions):
    ca: str | None = Field(default=None, description="CA bundle verifying the receiver (default: system CAs)")
    cert: str | None = Field(default=None, description="client certificate (PEM) for mutual TLS")
    key: str | None = Field(default=None, description="private key of cert (PEM)")


class MllpOptions(SinkOptions):
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    ack_timeout_s: float = Field(default=30.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=20, description="sends of one message before SinkRetryable")
    retry_backoff_s: float = Field(default=0.5, gt=0, description="first backoff between resends (doubles)")
    max_backoff_s: float = Field(default=10.0, gt=0)
    breaker_failures: int = Field(default=5, ge=1)
    breaker_reset_s: float = Field(default=30.0, gt=0)
    tls: MllpTlsOptions | None = None
    sending_app: str = "CLINSTREAM"
    sending_facility: str = ""
    receiving_app: str = ""
    receiving_facility: str = ""
    version: str = Field(default="2.5", pattern=r"^2\.[1-9](\.\d)?$")
    processing_id: Literal["P", "T", "D"] = "P"
    max_ack_bytes: int = Field(default=1_048_576, ge=1024)


def ssl_context(tls: MllpTlsOptions | None) -> ssl.SSLContext | None:
    """A client TLS context, or SinkConfigError naming the bad ``tls`` key."""
    if tls is None:
        return None
    for name in ("ca", "cert", "key"):
        path = getattr(tls, name)
        if path is not None and not Path(path).is_file():
            raise SinkConfigError(f"sink.options.tls.{name}", f"no such file: {path}")
    if tls.key is not None and tls.cert is None:
        raise SinkConfigError("sink.options.tls.cert", "a client key needs its certificate")
    try:
        ctx = ssl.create_default_context(cafile=tls.ca)
        if tls.cert is not None:
            ctx.load_cert_chain(tls.cert, tls.key)
    except ssl.SSLError as exc:
        key = "sink.options.tls.cert" if tls.cert else "sink.options.tls.ca"
        raise SinkConfigError(key, f"unusable TLS material: {exc}") from exc
    return ctx


def ack_detail(ack: bytes) -> str:
    """MSA-3 and ERR text of a negative ACK, short (it ends up in DLQ headers)."""
    try:
        msg = parse_message(ack)
    except Hl7ParseError:
        return ""
    parts: list[str] = []
    msa = msg.segment("MSA")
    if msa is not None and msa.get(3):
        parts.append(msa.get(3))
    for err in msg.segments("ERR"):
        # v2.5+: ERR-3 code ^ text, ERR-8 user message, ERR-7 diagnostics; v2.3/2.4: ERR-1.4 (CE).
        code = " ".join(p for p in (err.get(3, comp=1), err.get(3, comp=2)) if p)
        legacy = " ".join(p for p in (err.get(1, comp=4, sub=1), err.get(1, comp=4, sub=2)) if p)
        text = err.get(8) or err.get(7)
        parts.append("ERR " + "; ".join(p for p in (code or legacy, text) if p))
    return " | ".join(parts)[:500]


@register_sink("mllp")
class MllpSink(Sink):
    Options = MllpOptions
    stores_offsets = False
    options: MllpOptions

    def __init__(self, options: MllpOptions, destination: str, settings: Any = None) -> None:  # type: ignore[override]
        super().__init__(options, destination, settings)
        self._ssl = ssl_context(options.tls)
        self.header = Header(options.sending_app, options.sending_facility, options.receiving_app,
                             options.receiving_facility, options.version, options.processing_id)
        self.breaker = CircuitBreaker(options.breaker_failures, options.breaker_reset_s)
        self.label = f"mllp://{options.host}:{options.port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: MllpClient | None = None
        self._rng = random.Random()
        # (topic, partition) -> last offset ACKed by the receiver. When the runner repeats a write
        # (after a rejection or a retry) the records already accepted are not sent again.
        self._acked: dict[tuple[str, int], int] = {}
        self.sent = 0  # frames written, resends included
        self.delivered = 0
        self.resent = 0
        self.rejected = 0
        self.stale_acks = 0

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()

    def stop(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.run_until_complete(self._disconnect())
            self._loop.close()
        self._loop = None

    def health(self) -> dict[str, Any]:
        return {"sink": self.kind, "destination": self.destination, "ok": self.breaker.state != "open",
                "circuit": self.breaker.state, "connected": self._client is not None, "sent": self.sent,
                "delivered": self.delivered, "resent": self.resent, "rejected": self.rejected,
                "stale_acks": self.stale_acks}

    def committed_offsets(self, topic: str, partitions: list[int]) -> dict[int, int]:
        return {}

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        self.start()
        assert self._loop is not None
        return self._loop.run_until_complete(coro)

    # --- delivery ------------------------------------------------------------------------
    def write(self, batches: list[SinkBatch]) -> None:
        for batch in batches:
            key = (batch.topic, batch.partition)
            for rec in batch.records:
                if rec.offset <= self._acked.get(key, -1):
                    continue
                where = (batch.partition, rec.offset)
                try:
                    rendered = render_event(rec.event, self.header)
                except RenderError as exc:
                    self.rejected += 1
                    raise SinkRejected(str(exc), [where]) from exc
                self._run(self._deliver(rendered, where))
                self._acked[key] = rec.offset
                self.delivered += 1

    async def _deliver(self, msg: Rendered, where: tuple[int, int]) -> None:
        """Send until an ACK for this control id arrives; the same bytes on every attempt."""
        data = frame(msg.payload)
        attempt = 0
        while True:
            self.breaker.before_call()
            attempt += 1
            try:
                client = await self._connection()
                self.sent += 1
                if attempt > 1:
                    self.resent += 1
                await client.send_raw(data)
                code, ack = await self._ack_for(client, msg.control_id)
            except _TRANSPORT_ERRORS as exc:
                await self._disconnect()
                self.breaker.failure()
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                error = SinkRetryable(f"{self.label}: {msg.message_type} control id {msg.control_id} "
                                      f"not acknowledged after {attempt} attempt(s): {reason}")
                if attempt >= self.options.max_attempts or self.breaker.state == "open":
                    raise error from exc
                log.warning("%s; resending", error)
                await asyncio.sleep(backoff_delay(attempt, self.options.retry_backoff_s,
                                                  self.options.max_backoff_s, self._rng))
                continue
            # A negative ACK is an answer, not an outage: it does not trip the breaker.
            self.breaker.success()
            if code in ACCEPTED:
                return
            self.rejected += 1
            detail = ack_detail(ack)
            raise SinkRejected(f"{self.label} answered {code} to {msg.message_type} control id "
                               f"{msg.control_id}" + (f": {detail}" if detail else ""), [where])

    async def _ack_for(self, client: MllpClient, control_id: str) -> tuple[str, bytes]:
        """The ACK whose MSA-2 is ``control_id``, within ack_timeout_s; stale ACKs are skipped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.ack_timeout_s
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no ACK within {self.options.ack_timeout_s}s")
            ack = await asyncio.wait_for(client.read_ack(), remaining)
            code, acked = ack_code_of(ack)
            if acked == control_id:
                return code, ack
            # An ACK for an earlier message (the receiver answered after we gave up on it).
            self.stale_acks += 1
            log.warning("%s: skipped an ACK for control id %s while waiting for %s", self.label, acked, control_id)

    async def _connection(self) -> MllpClient:
        if self._client is None:
            opts = self.options
            client = MllpClient(opts.host, opts.port, timeout_s=opts.connect_timeout_s,
                                max_ack_bytes=opts.max_ack_bytes, ssl_context=self._ssl)
            await client.connect()
            # The client uses one timeout for connect and reads; from here on it bounds ACK reads.
            client.timeout_s = opts.ack_timeout_s
            self._client = client
            log.info("%s: connected (destination %s)", self.label, self.destination)
        return self._client

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except OSError:
                pass  # already broken: nothing to flush
