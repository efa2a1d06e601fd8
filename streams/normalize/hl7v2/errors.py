"""Typed conversion errors (all are Hl7ParseError, so one except clause covers them)."""

from __future__ import annotations

from schemas.hl7v2.errors import Hl7ParseError


class UnsupportedMessageError(Hl7ParseError):
    """The message type/trigger has no v2-to-FHIR mapping here (ACK error 200/201)."""
