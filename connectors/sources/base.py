"""The source protocol and registry: a source is named in the topology by ``kind``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ValidationError

from topology.model import SourceSpec
from topology.settings import KafkaSettings


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


def register_source(kind: str) -> Callable[[SourceFactory], SourceFactory]:
    def deco(factory: SourceFactory) -> SourceFactory:
        _REGISTRY[kind] = factory
        return factory

    return deco


def create_source(spec: SourceSpec, settings: KafkaSettings) -> Source:
    # importing the modules registers them
    from connectors.sources import fhir_http as _fhir_http  # noqa: F401
    from connectors.sources import filedrop as _filedrop  # noqa: F401
    from connectors.sources import mllp as _mllp  # noqa: F401
    from connectors.sources.mllp import listener as _listener  # noqa: F401

    try:
        factory = _REGISTRY[spec.kind]
    except KeyError:
        raise SourceConfigError(
            f"source {spec.name!r}: no source kind {spec.kind!r} (have: {', '.join(sorted(_REGISTRY))})"
        ) from None
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
