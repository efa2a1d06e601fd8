"""MLLP framing: <VT> payload <FS><CR>, robust to split frames, batched frames and junk.

The decoder is a pure state machine fed with whatever a socket read returned.
A frame larger than the configured limit is not buffered past the limit: its
head is kept (so the MSH can still be read for the negative ACK) and the rest is
discarded until the end marker.
"""

from __future__ import annotations

from dataclasses import dataclass

START = b"\x0b"
END = b"\x1c\x0d"
END_BLOCK = 0x1C


def frame(payload: bytes) -> bytes:
    return START + payload + END


@dataclass(frozen=True, slots=True)
class Frame:
    payload: bytes


@dataclass(frozen=True, slots=True)
class OversizeFrame:
    head: bytes  # the first max_bytes of the payload
    size: int  # full size seen


@dataclass(frozen=True, slots=True)
class Junk:
    size: int  # bytes outside any frame, dropped


FrameEvent = Frame | OversizeFrame | Junk


class MllpDecoder:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._in_frame = False
        self._oversize_seen = 0  # >0 while discarding the tail of an oversize frame
        self._oversize_head = b""
        self._pending_fs = False  # a lone FS at the end of the last chunk (CR may follow)

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[FrameEvent]:
        out: list[FrameEvent] = []
        view = memoryview(data)
        pos = 0
        n = len(data)
        if self._pending_fs and n:
            self._pending_fs = False
            if data[0] == 0x0D:
                self._finish(out)
                pos = 1
            else:
                self._append(b"\x1c")
        while pos < n:
            if not self._in_frame:
                start = data.find(START, pos)
                if start < 0:
                    out.append(Junk(n - pos))
                    return out
                if start > pos and data[pos:start].strip(b"\r\n\t ") != b"":
                    out.append(Junk(start - pos))
                self._in_frame = True
                pos = start + 1
                continue
            end = data.find(END, pos)
            if end < 0:
                chunk_end = n
                if data[-1] == END_BLOCK:
                    chunk_end = n - 1
                    self._pending_fs = True
                # a VT inside a frame means the sender restarted a frame: drop what we had
                restart = data.rfind(START, pos, chunk_end)
                if restart >= 0:
                    out.append(Junk(len(self._buf) + restart - pos + 1))
                    self._reset()
                    self._in_frame = True
                    pos = restart + 1
                self._append(view[pos:chunk_end])
                return out
            restart = data.rfind(START, pos, end)
            if restart >= 0:
                out.append(Junk(len(self._buf) + restart - pos + 1))
                self._reset()
                self._in_frame = True
                pos = restart + 1
            self._append(view[pos:end])
            self._finish(out)
            pos = end + 2
        return out

    def _append(self, chunk: bytes | memoryview) -> None:
        if self._oversize_seen:
            self._oversize_seen += len(chunk)
            return
        room = self.max_bytes - len(self._buf)
        if len(chunk) <= room:
            self._buf += chunk
            return
        self._buf += chunk[:room]
        self._oversize_head = bytes(self._buf)
        self._oversize_seen = len(self._buf) + len(chunk) - room
        self._buf.clear()

    def _finish(self, out: list[FrameEvent]) -> None:
        if self._oversize_seen:
            out.append(OversizeFrame(self._oversize_head, self._oversize_seen))
        else:
            out.append(Frame(bytes(self._buf)))
        self._reset()

    def _reset(self) -> None:
        self._buf.clear()
        self._in_frame = False
        self._oversize_seen = 0
        self._oversize_head = b""
