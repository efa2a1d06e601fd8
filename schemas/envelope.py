"""The canonical envelope: pydantic twin for the edges, plain-dict Avro codec for the hot path.

Agents pass events around as plain dicts shaped like the Avro record except that
``resources`` holds the parsed FHIR resources (a list of dicts); ``encode_event``
/ ``decode_event`` convert to and from the Avro bytes (schemaless, with the
schema fingerprint travelling in a header, DESIGN §3).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, Field

from schemas.avro_codec import AvroCodecError, compile_codec, parsing_canonical_form
from schemas.headers import SCHEMA_FINGERPRINT as SCHEMA_HEADER
from schemas.ids import uuid5_str

SCHEMA_PATH = Path(__file__).with_name("clinical_event.avsc")
EVENT_NAMESPACE = uuid.UUID("5b1f6f0e-8a2c-4c1e-9a55-2f6c1a7c0d11")


class EnvelopeError(ValueError):
    """A record that is not a valid ClinicalEvent."""


class SchemaMismatchError(EnvelopeError):
    """A record whose ``clinstream-schema`` header names a schema this build does not read."""


class SourceIdentifier(BaseModel):
    system: str | None = None
    value: str
    type: str | None = None


class PatientRef(BaseModel):
    euid: str | None = None
    identifiers: list[SourceIdentifier] = Field(default_factory=list)


class Lineage(BaseModel):
    topic: str
    partition: int
    offset: int
    stages: list[str] = Field(default_factory=list)


class ClinicalEvent(BaseModel):
    """Pydantic twin of ``clinical_event.avsc`` (used at the edges and in tests, not per event)."""

    event_id: str
    event_type: str
    source: str
    source_message_id: str | None = None
    patient: PatientRef = Field(default_factory=PatientRef)
    occurred_at: str | None = None
    received_at: str
    resources: list[dict[str, Any]] = Field(default_factory=list)
    destination: str | None = None
    purpose: str | None = None
    lineage: Lineage

    def to_bytes(self) -> bytes:
        return encode_event(self.model_dump())

    @classmethod
    def from_bytes(cls, data: bytes) -> ClinicalEvent:
        return cls.model_validate(decode_event(data))


@lru_cache(maxsize=1)
def parsed_schema() -> dict[str, Any]:
    # fastavro is imported here, not at the top: the per-event codec is our own (schemas.avro_codec),
    # and every source, worker and sink process imports this module (fastavro: +3 MB RSS each).
    import fastavro

    return fastavro.parse_schema(json.loads(SCHEMA_PATH.read_text()))


@lru_cache(maxsize=1)
def schema_fingerprint() -> str:
    """SHA-256 of the schema's Parsing Canonical Form: the ``clinstream-schema`` header of every
    record this build encodes, and the only writer schema it decodes (DESIGN §3: without a Schema
    Registry the fingerprint travels in a header and the schema ships in ``schemas/``)."""
    form = parsing_canonical_form(json.loads(SCHEMA_PATH.read_text()))
    return hashlib.sha256(form.encode()).hexdigest()


def schema_header() -> tuple[str, bytes]:
    """The ``clinstream-schema`` header, ready for a Kafka header list."""
    return SCHEMA_HEADER, schema_fingerprint().encode()


def restamped_headers(headers: Mapping[str, str], drop: Collection[str] = ()) -> list[tuple[str, str]]:
    """A consumed record's headers for the record a stage writes from it: the same headers (less
    ``drop``) without the consumed record's ``clinstream-schema``, then this build's, as the last."""
    pairs = [(k, v) for k, v in headers.items() if k != SCHEMA_HEADER and k not in drop]
    pairs.append((SCHEMA_HEADER, schema_fingerprint()))
    return pairs


def event_id_for(source: str, raw: bytes) -> str:
    """Same input bytes from the same source always give the same id (replays are idempotent)."""
    digest = hashlib.sha256(raw).hexdigest()
    return uuid5_str(EVENT_NAMESPACE, f"{source}\x1f{digest}")


_LAST_NOW: tuple[int, str] = (-1, "")  # (epoch ms, its text): stamps within one millisecond are one string


def utc_now_iso() -> str:
    """The UTC instant now, to the millisecond (``2024-05-01T10:00:01.250Z``)."""
    global _LAST_NOW
    ms = time.time_ns() // 1_000_000
    last = _LAST_NOW  # one read: another thread may replace it, never half-way
    if last[0] == ms:
        return last[1]
    text = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    _LAST_NOW = (ms, text)
    return text


@lru_cache(maxsize=1)
def _codec() -> tuple[Callable[[dict[str, Any]], bytes], Callable[[bytes], dict[str, Any]]]:
    # Compiled from the .avsc (schemas.avro_codec): the Avro binary fastavro writes, ~8x cheaper per event.
    return compile_codec(json.loads(SCHEMA_PATH.read_text()))


def encode_event(event: dict[str, Any]) -> bytes:
    """The Avro bytes of ``event``. An event may carry ``resources_json`` beside ``resources`` (the
    normalize stage sets it for the stages after it): it is written as it is, so a stage that
    changes ``resources`` of such an event must drop it (``event.pop("resources_json", None)``)."""
    record = dict(event)
    resources = record.pop("resources", None)
    if "resources_json" not in record:
        record["resources_json"] = orjson.dumps(resources or []).decode()
    try:
        return _codec()[0](record)
    except AvroCodecError as exc:
        raise EnvelopeError(f"cannot encode ClinicalEvent: {exc}") from exc


def decode_event(data: bytes, schema: str | bytes | None = None) -> dict[str, Any]:
    """``schema``: the record's ``clinstream-schema`` header, if it has one. A record written with
    another schema is refused (its bytes cannot be read with this one), never misread."""
    if schema:
        if isinstance(schema, bytes):
            schema = schema.decode("utf-8", "replace")
        if schema != schema_fingerprint():
            raise SchemaMismatchError(f"record written with schema {schema[:16]}..., not the {SCHEMA_PATH.name} "
                                      f"this build reads ({schema_fingerprint()[:16]}...)")
    try:
        record = _codec()[1](data)
        record["resources"] = orjson.loads(record.pop("resources_json"))
    except (AvroCodecError, orjson.JSONDecodeError) as exc:
        raise EnvelopeError(f"not a ClinicalEvent record: {type(exc).__name__}: {exc}") from exc
    return record
