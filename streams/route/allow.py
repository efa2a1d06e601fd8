"""Allow-lists of FHIR element paths compiled into a trie the projection walks.

``Patient.name.family`` allows one leaf, ``Patient.name`` the whole subtree, and
``Observation.value[x]`` every typed variant (``valueQuantity``, ``valueString`` ...).
A trie node maps an element name to ``(child, path)``; ``child is None`` means the
whole subtree is allowed. ``path`` is what the disclosure log reports.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from streams.route.errors import RoutePolicyError
from streams.route.fhirmeta import CHOICE_SUFFIXES, R4_RESOURCE_TYPES

Node = dict[str, tuple["Node | None", str]]
_SEGMENT = re.compile(r"^[a-z][A-Za-z0-9]*(\[x\])?$")


def split_path(path: str) -> tuple[str, list[str]]:
    """``Patient.name.family`` -> ``("Patient", ["name", "family"])``, validated."""
    parts = path.strip().split(".")
    rtype, segments = parts[0], parts[1:]
    if rtype not in R4_RESOURCE_TYPES:
        raise RoutePolicyError(f"allow path {path!r}: {rtype!r} is not a FHIR R4 resource type")
    if not segments:
        raise RoutePolicyError(f"allow path {path!r}: name at least one element (default deny)")
    for seg in segments:
        if not _SEGMENT.match(seg):
            raise RoutePolicyError(f"allow path {path!r}: {seg!r} is not a FHIR element name")
    for seg in segments[:-1]:
        if seg.endswith("[x]"):
            raise RoutePolicyError(f"allow path {path!r}: a choice element [x] must be the last segment")
    return rtype, segments


def _expand(seg: str) -> list[str]:
    if seg.endswith("[x]"):
        stem = seg[:-3]
        return [stem + suffix for suffix in CHOICE_SUFFIXES]
    return [seg]


def compile_allow(paths: Iterable[str]) -> dict[str, Node]:
    """Allow paths -> ``{resourceType: trie}``. A shorter path swallows longer ones under it."""
    tries: dict[str, Node] = {}
    for raw in paths:
        rtype, segments = split_path(raw)
        node = tries.setdefault(rtype, {})
        prefix = rtype
        for i, seg in enumerate(segments):
            last = i == len(segments) - 1
            for key in _expand(seg):
                path = f"{prefix}.{key}"
                current = node.get(key)
                if last:
                    node[key] = (None, path)
                    # FHIR JSON carries a primitive's id/extensions in "_name": same element, same decision.
                    node["_" + key] = (None, path)
                elif current is None:
                    node[key] = ({}, path)
                # an existing whole-subtree entry (child None) already covers the longer path
            if not last:
                entry = node[seg]
                if entry[0] is None:
                    break
                node = entry[0]
                prefix = f"{prefix}.{seg}"
    return tries


def project(node: Node, src: dict, seen: dict[str, None]) -> dict:
    """Copy only allowed keys of ``src``; whole-subtree values are shared, not copied (treat as read-only)."""
    out = {}
    for k, v in src.items():
        ent = node.get(k)
        if ent is None:
            continue
        child = ent[0]
        if child is None:
            out[k] = v
            seen[ent[1]] = None
        else:
            t = type(v)
            if t is dict:
                r = project(child, v, seen)
                if r:
                    out[k] = r
            elif t is list:
                items = [r for x in v if type(x) is dict and (r := project(child, x, seen))]
                if items:
                    out[k] = items
            # a primitive where the allow-list expects children: nothing listed is present
    return out
