"""A tiny legacy-system stand-in: an MLLP receiver that ACKs every message and appends it to a file.

The demo runs it as "the system at the other end" of the ``mllp`` sink, and the tests
subclass it (override :meth:`MllpAckReceiver.acknowledge`) to answer AE or answer late.

It behaves like the receivers the sink is written for: commit-then-ACK (the message is
in the file before ``AA`` goes out) and duplicate suppression by MSH-10 control id (a
resent message is ACKed again but written once). Output is NDJSON, one object per
accepted message: ``received_at``, ``control_id``, ``message_type``, ``message`` (the
HL7 text, segments separated by ``\\r``).

``python -m connectors.sinks.mllp_receiver --port 2575 --out received.ndjson`` runs one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import ssl
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from connectors.sources.mllp.framing import Frame, MllpDecoder, OversizeFrame, frame
from schemas.hl7v2.ack import AckCode, AckError, build_ack
from schemas.hl7v2.errors import Hl7ParseError
from schemas.hl7v2.msh import MshHeader, header_from_segment
from schemas.hl7v2.parser import Message, parse_message

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Received:
    """One answered arrival (resends included): what tests assert on."""

    code: str
    control_id: str
    message_type: str
    payload: bytes
    duplicate: bool


class MllpAckReceiver:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, out_path: str | Path | None = None, *,
                 max_bytes: int = 1_048_576, dedupe_window: int = 100_000,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self.out_path = Path(out_path) if out_path is not None else None
        self.max_bytes = max_bytes
        self.dedupe_window = dedupe_window
        self.received: list[Received] = []
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._server: asyncio.Server | None = None
        self._out: IO[bytes] | None = None
        self._conns: set[asyncio.Task[Any]] = set()

    @property
    def accepted(self) -> int:
        """Distinct messages written (duplicates excluded)."""
        return sum(1 for r in self.received if not r.duplicate and r.code in ("AA", "CA"))

    async def start(self) -> MllpAckReceiver:
        if self.out_path is not None:
            self.out_path.parent.mkdir(parents=True, exist_ok=True)
            self._out = self.out_path.open("ab")
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]  # the real one when port 0 was asked
        log.info("MLLP ACK receiver listening on %s:%d", self.host, self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._conns):
                task.cancel()
            await asyncio.gather(*self._conns, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        if self._out is not None:
            self._out.close()
            self._out = None

    async def acknowledge(self, message: Message, header: MshHeader) -> tuple[AckCode, AckError | None]:
        """The answer to one parsed message; the default accepts everything (subclasses decide)."""
        return "AA", None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        decoder = MllpDecoder(self.max_bytes)
        try:
            while chunk := await reader.read(65536):
                for ev in decoder.feed(chunk):
                    if isinstance(ev, Frame):
                        ack = await self._handle(ev.payload)
                    elif isinstance(ev, OversizeFrame):
                        ack = build_ack(None, "AR", error=AckError(104, f"message of {ev.size} bytes too large"))
                    else:
                        continue  # junk between frames: nothing to answer
                    writer.write(frame(ack))
                    await writer.drain()
        except (ConnectionError, ssl.SSLError, asyncio.CancelledError):
            pass  # the sender went away (e.g. gave up waiting); its resend arrives on a new connection
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()

    async def _handle(self, payload: bytes) -> bytes:
        try:
            message = parse_message(payload, max_bytes=self.max_bytes)
            msh = message.segment("MSH")
            assert msh is not None  # parse_message guarantees the first segment is MSH
            header = header_from_segment(msh)
        except Hl7ParseError as exc:
            return build_ack(None, "AR", error=AckError.from_parse_error(exc))
        code, error = await self.acknowledge(message, header)
        # Checked after the (possibly slow) decision: a resend may have been stored meanwhile.
        duplicate = header.control_id in self._seen
        accepted = code in ("AA", "CA")
        self.received.append(Received(code, header.control_id, "^".join(message.message_type).rstrip("^"), payload,
                                      duplicate))
        if accepted and not duplicate:
            self._store(header, payload)
        return build_ack(header, code, error=error)

    def _store(self, header: MshHeader, payload: bytes) -> None:
        self._seen[header.control_id] = None
        if len(self._seen) > self.dedupe_window:
            self._seen.popitem(last=False)
        if self._out is not None:
            line = {"received_at": datetime.now(UTC).isoformat(), "control_id": header.control_id,
                    "message_type": f"{header.message_type}^{header.trigger}",
                    "message": payload.decode("utf-8", "replace")}
            self._out.write(orjson.dumps(line) + b"\n")
            self._out.flush()  # in the file before the ACK leaves


class ReceiverThread:
    """Run a receiver on its own event loop in a daemon thread (for synchronous callers and tests)."""

    def __init__(self, receiver: MllpAckReceiver) -> None:
        self.receiver = receiver
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="mllp-receiver", daemon=True)

    def __enter__(self) -> MllpAckReceiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.receiver.start(), self.loop).result(10)
        return self.receiver

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self.receiver.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


async def _main(host: str, port: int, out: Path) -> None:
    receiver = await MllpAckReceiver(host, port, out).start()
    try:
        await asyncio.Event().wait()
    finally:
        await receiver.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="MLLP receiver that ACKs everything and appends it to NDJSON")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2575)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.host, args.port, args.out))


if __name__ == "__main__":
    main()
