"""MLLP listener with commit-then-ACK.

For each frame: read the MSH (only what the ACK needs), produce the raw bytes to
``raw.hl7v2.<source>`` with the idempotent producer, and send ``MSA|AA`` only
after the delivery report came back. Frames that are not HL7 or are too large
get ``AR`` with an ERR segment and are kept on ``dlq.ingest``; a produce failure
gets ``AE`` (the sender should resend; nothing was persisted).

Frames from one connection are acknowledged in the order received; frames that
arrive together are produced concurrently, so a pipelining sender is not
serialised on broker round trips.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from connectors.sources.base import (
    DLQ_INGEST,
    ingest_rejection_headers,
    parse_options,
    register_source,
    server_ssl_context,
)
from connectors.sources.mllp.framing import Frame, Junk, MllpDecoder, OversizeFrame, frame
from schemas import headers as H
from schemas import metrics
from schemas.envelope import event_id_for, utc_now_iso
from schemas.hl7v2.ack import AckError, build_ack
from schemas.hl7v2.errors import Hl7ParseError
from schemas.hl7v2.msh import MshHeader, peek_msh
from topology.model import SourceSpec
from topology.producer import DeliveryError, DurableProducer
from topology.settings import KafkaSettings

log = logging.getLogger(__name__)


class MllpOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=2575, ge=0, le=65535)
    max_message_bytes: int = Field(default=1_048_576, ge=1024)
    max_connections: int = Field(default=256, ge=1)
    idle_timeout_s: float = Field(default=300.0, gt=0)
    read_chunk_bytes: int = Field(default=65536, ge=512)
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = Field(default=None, description="CA bundle; set to require client certificates")


def patient_key(raw: bytes) -> bytes | None:
    """PID-3 (first repetition's id + assigning authority) as the partition key.

    Keying raw records by the source's patient id keeps one patient's messages in
    order on one partition before identity resolution (DESIGN §1). This is a byte
    scan, not a parse: the listener reads nothing else beyond the MSH.
    """
    for sep in (b"\rPID", b"\nPID"):
        i = raw.find(sep)
        if i >= 0:
            break
    else:
        return None
    fs = raw[3:4]
    line_end = len(raw)
    for term in (b"\r", b"\n"):
        j = raw.find(term, i + 1)
        if 0 <= j < line_end:
            line_end = j
    fields = raw[i + 1 : line_end].split(fs)
    if len(fields) < 4 or not fields[3]:
        return None
    comp, rep = raw[4:5], raw[5:6]
    first = fields[3].split(rep, 1)[0]
    parts = first.split(comp)
    ident = parts[0]
    authority = parts[3] if len(parts) > 3 else b""
    return (authority + b"|" + ident) if ident else None


@dataclass
class MllpStats:
    connections: int = 0
    connections_total: int = 0
    received: int = 0
    acked: dict[str, int] = field(default_factory=lambda: {"AA": 0, "AE": 0, "AR": 0})
    dlq: int = 0
    junk_bytes: int = 0


class MllpListener:
    """An MLLP source (``kind: mllp`` in the topology)."""

    def __init__(
        self,
        name: str,
        topic: str,
        options: MllpOptions,
        settings: KafkaSettings,
        producer: DurableProducer | None = None,
    ) -> None:
        self.name = name
        self.topic = topic
        self.options = options
        self.settings = settings
        self._producer = producer
        self._own_producer = producer is None
        self._server: asyncio.Server | None = None
        self._slots = asyncio.Semaphore(options.max_connections)
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self.stats = MllpStats()
        self.metrics = metrics.source(name)
        self._source_header = H.encode([(H.SOURCE, name)])

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return self.options.port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        if self._producer is None:
            self._producer = DurableProducer(self.settings)
        self._server = await asyncio.start_server(
            self._on_connection, self.options.host, self.options.port, limit=2**20,
            ssl=server_ssl_context(self.options.tls_cert, self.options.tls_key, self.options.tls_client_ca),
        )
        log.info("MLLP source %s listening on %s:%d -> %s", self.name, self.options.host, self.port, self.topic)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._conn_tasks):
                task.cancel()
            await asyncio.gather(*self._conn_tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        if self._producer is not None and self._own_producer:
            await asyncio.to_thread(self._producer.close)
            self._producer = None

    def health(self) -> dict[str, Any]:
        return {
            "listening": self._server is not None and self._server.is_serving(),
            "port": self.port,
            "connections": self.stats.connections,
            "received": self.stats.received,
            "acked": dict(self.stats.acked),
            "dlq": self.stats.dlq,
        }

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._slots.locked():
            # Over the connection limit: refuse politely rather than queue unbounded work.
            log.warning("MLLP source %s: connection limit %d reached", self.name, self.options.max_connections)
            writer.close()
            return
        self._conn_tasks.add(task)
        async with self._slots:
            self.stats.connections += 1
            self.stats.connections_total += 1
            self.metrics.connection_opened()
            peer = writer.get_extra_info("peername")
            try:
                await self._serve(reader, writer, f"{peer[0]}:{peer[1]}" if peer else "?")
            except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                pass
            finally:
                self.stats.connections -= 1
                self.metrics.connection_closed()
                self._conn_tasks.discard(task)
                writer.close()
                try:
                    await writer.wait_closed()
                except (ConnectionError, ssl.SSLError):
                    pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        decoder = MllpDecoder(self.options.max_message_bytes)
        chunk_bytes, idle_s = self.options.read_chunk_bytes, self.options.idle_timeout_s
        while True:
            # asyncio.timeout, not wait_for: wait_for wraps every read in a task of its own (3.11)
            async with asyncio.timeout(idle_s):
                chunk = await reader.read(chunk_bytes)
            if not chunk:
                return
            events = decoder.feed(chunk)
            if not events:
                continue
            if len(events) == 1:  # a sender waiting for each ACK: one frame per read, no gather task
                acks = [await self._handle(events[0], peer)]
            else:
                acks = await asyncio.gather(*(self._handle(ev, peer) for ev in events))
            out = b"".join(frame(a) for a in acks if a is not None)
            if out:
                writer.write(out)
                await writer.drain()

    async def _handle(self, ev: Frame | OversizeFrame | Junk, peer: str) -> bytes | None:
        if isinstance(ev, Junk):
            self.stats.junk_bytes += ev.size
            return None
        self.stats.received += 1
        received_at = utc_now_iso()
        if isinstance(ev, OversizeFrame):
            header = _try_header(ev.head)
            reason = f"message of {ev.size} bytes exceeds max_message_bytes={self.options.max_message_bytes}"
            await self._to_dlq(ev.head, reason, "MessageTooLarge", peer, received_at, truncated=True)
            return self._ack(header, "AR", AckError(code=104, text=reason, segment_id="MSH"))
        payload = ev.payload
        try:
            header = peek_msh(payload)
        except Hl7ParseError as exc:
            await self._to_dlq(payload, str(exc), type(exc).__name__, peer, received_at)
            return self._ack(_try_header(payload), "AR", AckError.from_parse_error(exc))
        event_id = event_id_for(self.name, payload)
        hdrs = [
            *self._source_header,
            (H.EVENT_ID, event_id.encode()),
            (H.RECEIVED_AT, received_at.encode()),
            (H.TRACEPARENT, H.traceparent_for(event_id).encode()),
        ]
        try:
            assert self._producer is not None
            await self._producer.send(self.topic, payload, key=patient_key(payload), headers=hdrs)
        except DeliveryError as exc:
            log.error("MLLP source %s: not persisted (%s); answering AE so the sender resends", self.name, exc)
            self.metrics.record("not-persisted")
            return self._ack(header, "AE", AckError(code=207, text="message could not be persisted; resend"))
        self.metrics.accepted(len(payload))
        return self._ack(header, "AA")

    def _ack(self, header: MshHeader | None, code: str, error: AckError | None = None) -> bytes:
        self.stats.acked[code] = self.stats.acked.get(code, 0) + 1
        self.metrics.ack(code)
        return build_ack(header, code, error=error)  # type: ignore[arg-type]

    async def _to_dlq(
        self, payload: bytes, reason: str, error_class: str, peer: str, received_at: str, truncated: bool = False
    ) -> None:
        extra = [("origin-peer", peer)]
        if truncated:
            extra.append(("truncated", "true"))
        hdrs = ingest_rejection_headers(source=self.name, raw_topic=self.topic, reason=reason,
                                        error_class=error_class, received_at=received_at, extra=extra)
        assert self._producer is not None
        try:
            await self._producer.send(DLQ_INGEST, payload, headers=hdrs)
            self.stats.dlq += 1
            self.metrics.rejected()
        except DeliveryError:
            log.error("MLLP source %s: could not write rejected message to %s", self.name, DLQ_INGEST)


def _try_header(raw: bytes) -> MshHeader | None:
    try:
        return peek_msh(raw)
    except Hl7ParseError:
        return None


@register_source("mllp")
def _create(spec: SourceSpec, settings: KafkaSettings) -> MllpListener:
    return MllpListener(spec.name, spec.raw_topic, parse_options(MllpOptions, spec), settings)
