"""Split an HL7 v2 file into messages: batch files (FHS/BHS ... BTS/FTS) or plain MSH runs.

Pure functions, no I/O. Segments may end with CR, LF or CRLF in files (editors
and FTP transfers change them); each carved-out message uses CR between
segments as HL7 requires. Envelope segments (FHS, BHS, BTS, FTS) are checked,
not forwarded: a batch whose trailer count disagrees with the messages found, or
whose header has no trailer, is a truncated or corrupted transfer and the whole
file is refused rather than half-ingested.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_SEGMENT_SPLIT = re.compile(rb"\r\n|\r|\n")
_ENVELOPE = (b"FHS", b"BHS", b"BTS", b"FTS")


class Hl7FileError(ValueError):
    """The file as a whole is not a usable HL7 v2 file (the reason names the problem)."""


@dataclass
class Hl7File:
    messages: list[bytes] = field(default_factory=list)
    batched: bool = False


def _count_field(segment: bytes, fs: bytes) -> int | None:
    parts = segment.split(fs)
    if len(parts) > 1 and parts[1].strip().isdigit():
        return int(parts[1].strip())
    return None


def split_hl7_file(data: bytes) -> Hl7File:
    """Messages of a file in order; raises ``Hl7FileError`` for a file that cannot be trusted."""
    text = data.lstrip(b"\xef\xbb\xbf\x0b \t\r\n").rstrip(b"\x1c\r\n \t")
    if not text:
        raise Hl7FileError("file is empty")
    if text[:3] not in (b"MSH", b"FHS", b"BHS"):
        raise Hl7FileError(f"not an HL7 v2 file: starts with {text[:3]!r}, expected MSH, FHS or BHS")
    fs = text[3:4]
    out = Hl7File(batched=text[:3] in (b"FHS", b"BHS"))
    current: list[bytes] = []
    seen: dict[bytes, int] = dict.fromkeys(_ENVELOPE, 0)
    bts_counts: list[int] = []
    batch_messages: list[int] = []
    fts_count: int | None = None
    in_batch_count = 0

    def close_message() -> None:
        if current:
            out.messages.append(b"\r".join(current) + b"\r")
            current.clear()

    for seg in _SEGMENT_SPLIT.split(text):
        if not seg.strip():
            continue
        name = seg[:3]
        if name in _ENVELOPE:
            close_message()
            seen[name] += 1
            if name == b"BHS":
                in_batch_count = 0
            elif name == b"BTS":
                batch_messages.append(in_batch_count)
                count = _count_field(seg, fs)
                if count is not None:
                    bts_counts.append(count)
                else:
                    bts_counts.append(in_batch_count)
            elif name == b"FTS":
                fts_count = _count_field(seg, fs)
            continue
        if name == b"MSH":
            close_message()
            in_batch_count += 1
            current.append(seg)
        elif current:
            current.append(seg)
        else:
            raise Hl7FileError(f"segment {seg[:3].decode('ascii', 'replace')!r} outside any message")
    close_message()

    if seen[b"FHS"] and not seen[b"FTS"]:
        raise Hl7FileError("FHS without FTS: the file looks truncated")
    if seen[b"BHS"] != seen[b"BTS"]:
        raise Hl7FileError(f"{seen[b'BHS']} BHS but {seen[b'BTS']} BTS segments: the file looks truncated")
    for i, (declared, found) in enumerate(zip(bts_counts, batch_messages, strict=True)):
        if declared != found:
            raise Hl7FileError(f"batch {i + 1}: BTS-1 says {declared} messages, found {found}")
    if fts_count is not None and seen[b"BHS"] and fts_count != seen[b"BHS"]:
        raise Hl7FileError(f"FTS-1 says {fts_count} batches, found {seen[b'BHS']}")
    if not out.messages:
        raise Hl7FileError("no MSH segment in the file")
    return out
