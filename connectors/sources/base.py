"""The source protocol and registry: a source is named in the topology by ``kind``."""

from __future__ import annotations

import importlib
import ssl
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ValidationError

from schemas import headers as H
from topology.model import SourceSpec
from topology.settings import KafkaSettings

DLQ_INGEST = "dlq.ingest"


class SourceError(RuntimeError):
    """Base of source errors."""


class SourceConfigError(SourceError):
    """Bad source options; the message names the source and the key."""


@runtime_checkable
class Source(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def health(self) -> dict[str, Any]: ...


SourceFactory = Callable[[SourceSpec, KafkaSettings], Source]
_REGISTRY: dict[str, SourceFactory] = {}
# Built-in sources register themselves on import; imported only when the topology names them
# (as the sinks are): the FHIR HTTP source's aiohttp alone is 19 MB of RSS in an MLLP-only process.
_BUILTIN_MODULES = {
    "mllp": "connectors.sources.mllp.listener",
    "fhir-http": "connectors.sources.fhir_http",
    "file": "connectors.sources.filedrop",
}


def register_source(kind: str) -> Callable[[SourceFactory], SourceFactory]:
    def deco(factory: SourceFactory) -> SourceFactory:
        _REGISTRY[kind] = factory
        return factory

    return deco


def create_source(spec: SourceSpec, settings: KafkaSettings) -> Source:
    if spec.kind not in _REGISTRY and spec.kind in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[spec.kind])  # importing the module registers it
    try:
        factory = _REGISTRY[spec.kind]
    except KeyError:
        known = ", ".join(sorted(set(_REGISTRY) | set(_BUILTIN_MODULES)))
        raise SourceConfigError(f"source {spec.name!r}: no source kind {spec.kind!r} (have: {known})") from None
    return factory(spec, settings)


T = TypeVar("T", bound=BaseModel)


def parse_options(model: type[T], spec: SourceSpec) -> T:
    try:
        return model.model_validate(spec.options)
    except ValidationError as exc:
        bad = "; ".join(
            f"sources[{spec.name}].options.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise SourceConfigError(bad) from exc


def ingest_rejection_headers(
    *, source: str, raw_topic: str, reason: str, error_class: str | None, received_at: str,
    extra: Sequence[tuple[str, str]] = (),
) -> H.HeaderList:
    """Headers of a rejected input on ``dlq.ingest``: it never reached its raw topic, so no offset."""
    return H.dlq_headers(stage="ingest", error=reason, error_class=error_class, origin_topic=raw_topic,
                         origin_partition=-1, origin_offset=-1, source=source,
                         extra=[(H.RECEIVED_AT, received_at), *extra])


def server_ssl_context(cert: str | None, key: str | None, client_ca: str | None) -> ssl.SSLContext | None:
    """TLS for a listener; with ``client_ca`` set, clients must present a certificate it signed."""
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
