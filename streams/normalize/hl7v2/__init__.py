"""HL7 v2 → FHIR R4 conversion for the normalize stage (pure functions, no Kafka)."""

from streams.normalize.hl7v2.convert import SUPPORTED_MESSAGE_TYPES, convert_message, event_summary
from streams.normalize.hl7v2.errors import UnsupportedMessageError

__all__ = ["SUPPORTED_MESSAGE_TYPES", "UnsupportedMessageError", "convert_message", "event_summary"]
