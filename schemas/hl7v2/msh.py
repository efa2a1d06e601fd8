"""Read just the MSH segment: enough for an MLLP listener to ACK without parsing the rest."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.hl7v2.errors import Hl7ParseError
from schemas.hl7v2.parser import DEFAULT_MAX_BYTES, Encoding, Segment, codec_for_charset, read_encoding

__all__ = ["MshHeader", "header_from_segment", "peek_msh"]

# Bytes we skip before MSH: UTF-8 BOM, MLLP start block, blank lines.
_LEADING = b"\xef\xbb\xbf\x0b\r\n \t"


@dataclass(frozen=True, slots=True)
class MshHeader:
    """The MSH fields an acknowledgement (and routing) needs, decoded."""

    field_sep: str
    encoding_chars: str
    sending_app: str
    sending_facility: str
    receiving_app: str
    receiving_facility: str
    message_type: str
    trigger: str
    structure: str
    control_id: str
    processing_id: str
    version: str
    charset: str
    # Raw (still escaped) HD fields so an ACK can echo them back component for component.
    sending_app_raw: str = ""
    sending_facility_raw: str = ""
    receiving_app_raw: str = ""
    receiving_facility_raw: str = ""

    @property
    def encoding(self) -> Encoding:
        return Encoding(self.field_sep, self.encoding_chars)


def header_from_segment(msh: Segment) -> MshHeader:
    """Build the header from an already tokenized MSH segment."""
    mtype, trigger, structure = msh.get(9, 0, 1), msh.get(9, 0, 2), msh.get(9, 0, 3)
    if not structure and mtype and trigger:
        structure = f"{mtype}_{trigger}"
    return MshHeader(
        field_sep=msh.enc.field,
        encoding_chars=msh.enc.chars,
        sending_app=msh.get(3),
        sending_facility=msh.get(4),
        receiving_app=msh.get(5),
        receiving_facility=msh.get(6),
        message_type=mtype,
        trigger=trigger,
        structure=structure,
        control_id=msh.get(10),
        processing_id=msh.get(11),
        version=msh.get(12),
        charset=msh.get(18),
        sending_app_raw=msh.field(3),
        sending_facility_raw=msh.field(4),
        receiving_app_raw=msh.field(5),
        receiving_facility_raw=msh.field(6),
    )


def peek_msh(raw: bytes | bytearray | memoryview | str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> MshHeader:
    """Decode only the first (MSH) segment of ``raw``.

    Raises :class:`Hl7ParseError` when the data does not start with a usable MSH
    (wrong first segment, bad or missing encoding characters, no MSH-9 / MSH-10).
    """
    if isinstance(raw, str):
        line = raw.lstrip("\ufeff\x0b\r\n \t")
        end = _line_end_str(line)
        first = line[:end]
    elif isinstance(raw, bytes | bytearray | memoryview):
        data = bytes(raw)
        if len(data) > max_bytes:
            raise Hl7ParseError(f"message of {len(data)} bytes exceeds the {max_bytes} byte limit")
        data = data.lstrip(_LEADING)
        end = _line_end_bytes(data)
        first_b = data[:end].rstrip(b"\x1c")
        first = _decode_first(first_b)
    else:
        raise Hl7ParseError(f"cannot read an MSH from a {type(raw).__name__}")
    if not first:
        raise Hl7ParseError("empty message", hl7_error_code=100)
    enc = read_encoding(first)
    header = header_from_segment(Segment("MSH", first, enc, 1))
    if not header.message_type:
        raise Hl7ParseError("message type is missing", segment_index=1, segment_id="MSH", field=9,
                            hl7_error_code=101)
    if not header.control_id:
        raise Hl7ParseError("message control id is missing", segment_index=1, segment_id="MSH", field=10,
                            hl7_error_code=101)
    return header


def _line_end_str(text: str) -> int:
    ends = [i for i in (text.find("\r"), text.find("\n")) if i >= 0]
    return min(ends) if ends else len(text)


def _line_end_bytes(data: bytes) -> int:
    ends = [i for i in (data.find(b"\r"), data.find(b"\n")) if i >= 0]
    return min(ends) if ends else len(data)


def _decode_first(first: bytes) -> str:
    if first.isascii():
        return first.decode("ascii")
    # MSH-18 sits in the ASCII part of the segment whatever the charset, so read
    # it from a latin-1 view (lossless) before choosing the real codec.
    provisional = first.decode("latin-1")
    codec = None
    try:
        enc = read_encoding(provisional)
        codec = codec_for_charset(Segment("MSH", provisional, enc, 1).get(18))
    except Hl7ParseError:
        pass
    if codec not in (None, "utf-8", "ascii"):
        try:
            return first.decode(codec)
        except (UnicodeDecodeError, LookupError):
            return provisional
    try:
        return first.decode("utf-8")
    except UnicodeDecodeError:
        return provisional
