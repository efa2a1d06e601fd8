"""Sinks by name: the topology says ``sink: {kind: postgres, options: {...}}``."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from connectors.sinks.base import Sink, SinkOptions
from connectors.sinks.errors import SinkConfigError
from topology.model import SinkSpec

_REGISTRY: dict[str, type[Sink]] = {}
# Built-in sinks register themselves on import; imported lazily so a missing optional
# dependency of one sink does not break the others.
_BUILTIN_MODULES = {
    "postgres": "connectors.sinks.postgres",
    "ndjson": "connectors.sinks.ndjson",
    "fhir": "connectors.sinks.fhir",
    "webhook": "connectors.sinks.webhook",
    "mllp": "connectors.sinks.mllp",
}

S = TypeVar("S", bound=type[Sink])


def register_sink(name: str) -> Callable[[S], S]:
    def deco(cls: S) -> S:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"sink kind {name!r} already registered by {existing.__qualname__}")
        cls.kind = name
        _REGISTRY[name] = cls
        return cls

    return deco


def sink_class(kind: str) -> type[Sink]:
    if kind not in _REGISTRY and kind in _BUILTIN_MODULES:
        try:
            importlib.import_module(_BUILTIN_MODULES[kind])
        except ModuleNotFoundError as exc:
            if exc.name != _BUILTIN_MODULES[kind]:
                raise
    try:
        return _REGISTRY[kind]
    except KeyError:
        known = sorted(set(_REGISTRY) | {k for k in _BUILTIN_MODULES if _module_exists(k)})
        raise SinkConfigError("sink.kind", f"unknown sink kind {kind!r} (known: {', '.join(known)})") from None


def _module_exists(kind: str) -> bool:
    try:
        return importlib.util.find_spec(_BUILTIN_MODULES[kind]) is not None
    except ModuleNotFoundError:
        return False


def parse_options(model: type[SinkOptions], options: dict[str, Any], where: str) -> SinkOptions:
    """Validate options; the error names the first bad key as ``sink.options.<key>``."""
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        errs = exc.errors()
        first = errs[0]
        key = "sink.options" + "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in first["loc"])
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(options)'}: {e['msg']}" for e in errs
        )
        raise SinkConfigError(key, f"{where}: {detail}") from exc


def create_sink(spec: SinkSpec, destination: str, settings: Any = None) -> Sink:
    cls = sink_class(spec.kind)
    options = parse_options(cls.Options, dict(spec.options), f"destination {destination!r} sink {spec.kind!r}")
    return cls(options, destination=destination, settings=settings)


def registered() -> dict[str, type[Sink]]:
    for kind in _BUILTIN_MODULES:
        if _module_exists(kind):
            sink_class(kind)
    return dict(_REGISTRY)
