"""HL7 v2 → FHIR R4 conversion for the normalize stage (pure functions, no Kafka)."""

from schemas.compiled import load_sources

load_sources(__name__)  # first: picks compiled or source modules (see schemas.compiled)

from streams.normalize.hl7v2.convert import SUPPORTED_MESSAGE_TYPES, convert_message, event_summary  # noqa: E402
from streams.normalize.hl7v2.errors import UnsupportedMessageError  # noqa: E402

__all__ = ["SUPPORTED_MESSAGE_TYPES", "UnsupportedMessageError", "convert_message", "event_summary"]
