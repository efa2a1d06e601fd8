"""HL7 v2 (ER7) tokenizer, MSH peek and ACK builder: pure functions, no I/O."""

from schemas.compiled import load_sources

load_sources(__name__)  # first: picks compiled or source modules (see schemas.compiled)

from schemas.hl7v2.ack import AckError, ack_code_of, build_ack  # noqa: E402
from schemas.hl7v2.errors import Hl7ParseError  # noqa: E402
from schemas.hl7v2.msh import MshHeader, peek_msh  # noqa: E402
from schemas.hl7v2.parser import Message, Rep, Segment, parse_message  # noqa: E402

__all__ = [
    "AckError",
    "Hl7ParseError",
    "Message",
    "MshHeader",
    "Rep",
    "Segment",
    "ack_code_of",
    "build_ack",
    "parse_message",
    "peek_msh",
]
