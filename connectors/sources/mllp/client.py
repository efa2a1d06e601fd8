"""An MLLP client: send frames, read ACKs. Used by the demo, the benchmark, tests and the MLLP sink."""

from __future__ import annotations

import asyncio
import ssl

from connectors.sources.mllp.framing import Frame, MllpDecoder, OversizeFrame, frame


class MllpClientError(RuntimeError):
    """The peer closed the connection or sent something that is not an MLLP frame."""


class MllpClient:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout_s: float = 30.0,
        max_ack_bytes: int = 1_048_576,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._ssl = ssl_context
        self._decoder = MllpDecoder(max_ack_bytes)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: list[bytes] = []

    async def connect(self) -> MllpClient:
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, ssl=self._ssl), self.timeout_s
        )
        return self

    async def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (tests use this for split frames and junk)."""
        assert self._writer is not None, "connect() first"
        self._writer.write(data)
        await self._writer.drain()

    async def read_ack(self) -> bytes:
        assert self._reader is not None, "connect() first"
        while not self._pending:
            chunk = await asyncio.wait_for(self._reader.read(65536), self.timeout_s)
            if not chunk:
                raise MllpClientError("connection closed before an ACK arrived")
            for ev in self._decoder.feed(chunk):
                if isinstance(ev, Frame):
                    self._pending.append(ev.payload)
                elif isinstance(ev, OversizeFrame):
                    raise MllpClientError(f"ACK of {ev.size} bytes exceeds the limit")
        return self._pending.pop(0)

    async def send(self, message: bytes) -> bytes:
        """Send one message and wait for its ACK (closed loop)."""
        await self.send_raw(frame(message))
        return await self.read_ack()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except (ConnectionError, ssl.SSLError):
                pass
            self._writer = None

    async def __aenter__(self) -> MllpClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
