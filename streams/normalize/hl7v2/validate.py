"""Validate produced FHIR against the fhir.resources models (R4B: closest to R4 in fhir.resources 8).

Used by tests and, when configured, at the edge of the pipeline; never on the
default hot path (pydantic validation costs ~100x the mapping itself).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import ValidationError

__all__ = ["validate_bundle", "validate_resource"]


@cache
def _model(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(resource_type)


def validate_resource(resource: dict[str, Any]) -> list[str]:
    """Problems with one resource, as ``"<Type>/<id>: <path>: <message>"`` strings."""
    rtype = resource.get("resourceType", "")
    label = f"{rtype}/{resource.get('id', '?')}"
    try:
        model = _model(rtype)
    except (KeyError, ValueError, ImportError) as exc:
        return [f"{label}: unknown resource type ({exc})"]
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        return [f"{label}: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
    return []


def validate_bundle(bundle: dict[str, Any]) -> list[str]:
    """Validate every entry's resource, then the Bundle envelope itself; [] when valid."""
    problems: list[str] = []
    for entry in bundle.get("entry", []):
        problems.extend(validate_resource(entry.get("resource", {})))
    problems.extend(validate_resource(bundle))
    return problems
