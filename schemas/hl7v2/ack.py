"""HL7 v2 acknowledgements (original and enhanced mode), built for the sender's version.

Plain string building: an ACK is three short segments and hl7apy would cost
milliseconds per message on the listener's hot path for no gain.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Literal

from schemas.hl7v2.errors import Hl7ParseError
from schemas.hl7v2.msh import MshHeader
from schemas.hl7v2.parser import Encoding, codec_for_charset, escape, parse_message

__all__ = ["ERROR_CODES", "AckCode", "AckError", "ack_code_of", "build_ack"]

AckCode = Literal["AA", "AE", "AR", "CA", "CE", "CR"]

# HL7 table 0357 (message error condition codes).
ERROR_CODES: dict[int, str] = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    104: "Value too long",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}

_DEFAULT_ENCODING = Encoding("|", "^~\\&")
_DEFAULT_VERSION = "2.5"


@dataclass(frozen=True, slots=True)
class AckError:
    """One problem to report in an ERR segment.

    ``segment_index`` is the 1-based position of the offending segment in the
    message, ``field`` the HL7 field number; ``severity`` is table 0516
    (E error, W warning, I information, F fatal).
    """

    code: int
    text: str
    segment_id: str | None = None
    segment_index: int | None = None
    field: int | None = None
    severity: Literal["E", "W", "I", "F"] = "E"

    @classmethod
    def from_parse_error(cls, err: Hl7ParseError) -> AckError:
        return cls(
            code=err.hl7_error_code,
            text=err.reason,
            segment_id=err.segment_id,
            segment_index=err.segment_index,
            field=err.field,
        )


@lru_cache(maxsize=64)  # a listener's senders speak a handful of versions
def _version_tuple(version: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in version.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


_LAST_TS: tuple[datetime, str] = (datetime.min.replace(tzinfo=UTC), "")  # one ACK time per second


def _ts(now: datetime) -> str:
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    global _LAST_TS
    second = now.replace(microsecond=0)
    last = _LAST_TS  # one read: another thread may replace it, never half-way
    if last[0] == second and second.utcoffset() == last[0].utcoffset():
        return last[1]
    text = second.strftime("%Y%m%d%H%M%S") + (second.strftime("%z") or "+0000")
    _LAST_TS = (second, text)
    return text


def _err_segment(error: AckError, enc: Encoding, version: tuple[int, ...]) -> str:
    fs, cs, ss = enc.field, enc.comp, enc.sub
    label = ERROR_CODES.get(error.code, "Application internal error")
    seg_id = escape(error.segment_id or "", enc)
    seq = "" if error.segment_index is None else str(error.segment_index)
    fld = "" if error.field is None else str(error.field)
    text = escape(error.text, enc)
    if version and version < (2, 5):
        # v2.3/2.4: ERR-1 ELD = segment id ^ sequence ^ field position ^ code (CE as subcomponents).
        code = ss.join((str(error.code), escape(label, enc), "HL70357"))
        return f"ERR{fs}{cs.join((seg_id, seq, fld, code))}"
    # v2.5+: ERR-1 is deprecated; ERR-2 location, ERR-3 code, ERR-4 severity,
    # ERR-7 diagnostic information, ERR-8 user message.
    location = cs.join((seg_id, seq, fld)).rstrip(cs) if seg_id else ""
    code = cs.join((str(error.code), escape(label, enc), "HL70357"))
    fields = ["ERR", "", location, code, error.severity, "", "", text, text]
    return fs.join(fields)


def build_ack(
    header: MshHeader | None,
    code: AckCode,
    *,
    error: AckError | None = None,
    control_id: str | None = None,
    now: datetime | None = None,
) -> bytes:
    """An ACK for ``header``'s message, CR-separated, encoded in the sender's charset.

    MSH sending/receiving are swapped, the encoding characters and version are the
    sender's, MSH-9 is ``ACK^<trigger>^ACK`` (``ACK^<trigger>`` before v2.3.1, which
    had no structure component), MSA-2 echoes the original control id.  With
    ``header=None`` (unreadable message) a best-effort v2.5 ACK with ``|^~\\&`` is
    produced.  A new control id is generated unless one is given.
    """
    if code not in ("AA", "AE", "AR", "CA", "CE", "CR"):
        raise ValueError(f"invalid acknowledgement code {code!r}")
    now = now or datetime.now(UTC)
    control = control_id or os.urandom(10).hex().upper()  # 80 random bits, 20 characters (MSH-10 allows 20)
    if header is None:
        enc = _DEFAULT_ENCODING
        version_s, trigger, orig_control, processing = _DEFAULT_VERSION, "", "", "P"
        apps = ("", "", "", "")
        charset = ""
    else:
        enc = header.encoding
        version_s = header.version or _DEFAULT_VERSION
        trigger, orig_control = header.trigger, header.control_id
        processing = header.processing_id or "P"
        apps = (
            header.receiving_app_raw or escape(header.receiving_app, enc),
            header.receiving_facility_raw or escape(header.receiving_facility, enc),
            header.sending_app_raw or escape(header.sending_app, enc),
            header.sending_facility_raw or escape(header.sending_facility, enc),
        )
        charset = header.charset
    version = _version_tuple(version_s)
    fs, cs = enc.field, enc.comp
    msg_type = cs.join(("ACK", escape(trigger, enc), "ACK")) if version >= (2, 3, 1) or not version else (
        cs.join(("ACK", escape(trigger, enc))) if trigger else "ACK"
    )
    msh = fs.join(
        [
            f"MSH{fs}{enc.chars}",
            *apps,
            _ts(now),
            "",
            msg_type,
            escape(control, enc),
            escape(processing, enc),
            escape(version_s, enc),
        ]
    )
    if charset:
        msh += fs * 6 + escape(charset, enc)
    msa_fields = ["MSA", code, escape(orig_control, enc)]
    if error is not None and version and version < (2, 5):
        # MSA-3 text message was withdrawn in 2.5 (ERR carries it); older receivers show it.
        msa_fields.append(escape(error.text, enc))
    segments = [msh, fs.join(msa_fields)]
    if error is not None:
        segments.append(_err_segment(error, enc, version))
    text = "\r".join(segments) + "\r"
    return _encode(text, charset)


def _encode(text: str, charset: str) -> bytes:
    codec = (codec_for_charset(charset) or "utf-8") if charset else "utf-8"
    try:
        return text.encode(codec)
    except (UnicodeEncodeError, LookupError):
        return text.encode("utf-8")


def ack_code_of(ack: bytes | str) -> tuple[str, str]:
    """(MSA-1 acknowledgement code, MSA-2 control id) of an ACK; Hl7ParseError if none."""
    msg = parse_message(ack)
    msa = msg.segment("MSA")
    if msa is None:
        raise Hl7ParseError("acknowledgement has no MSA segment", segment_id="MSA", hl7_error_code=100)
    code = msa.get(1).strip()
    if code not in ("AA", "AE", "AR", "CA", "CE", "CR"):
        raise Hl7ParseError(
            f"invalid acknowledgement code {code!r}", segment_index=msa.index, segment_id="MSA", field=1,
            hl7_error_code=103,
        )
    return code, msa.get(2)
