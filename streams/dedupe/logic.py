"""Duplicate detection, pure: what to do with an event given what was seen in the window.

Two keys per event:
- the *control key* (source + MSH-10 / Bundle id): a resend of the same message;
- the *content hash*: a digest of the clinical content with everything that
  changes between resends removed (MessageHeader, Provenance, resource ids,
  references, meta), so a message re-sent with a new control id and timestamp
  is still recognised.

A control key seen before with *different* content is a sender bug (control id
reused): both messages are forwarded and the second is flagged, never dropped.
"""

from __future__ import annotations

import hashlib
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson

VOLATILE_RESOURCES = frozenset({"MessageHeader", "Provenance"})
VOLATILE_KEYS = frozenset({"id", "fullUrl", "reference", "meta", "text"})


@dataclass(frozen=True, slots=True)
class DedupeDecision:
    action: str  # "forward" | "drop"
    reason: str  # "new" | "duplicate-control-id" | "duplicate-content" | "control-id-reused"
    content_hash: str

    @property
    def flagged(self) -> bool:
        return self.reason == "control-id-reused"


def _strip_dict(node: dict[str, Any]) -> dict[str, Any]:
    # Recurse only into containers: most values are scalars, and a call per scalar was most of the cost.
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k in VOLATILE_KEYS:
            continue
        t = type(v)
        if t is dict:
            v = _strip_dict(v)
        elif t is list:
            v = _strip_list(v)
        out[k] = v
    return out


def _strip_list(node: list[Any]) -> list[Any]:
    out = []
    for v in node:
        t = type(v)
        if t is dict:
            v = _strip_dict(v)
        elif t is list:
            v = _strip_list(v)
        out.append(v)
    return out


def content_hash(event: dict[str, Any]) -> str:
    resources = [_strip_dict(r) for r in event.get("resources", ())
                 if r.get("resourceType") not in VOLATILE_RESOURCES]
    payload = orjson.dumps([event.get("event_type"), resources], option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


def control_key(event: dict[str, Any]) -> str | None:
    msg_id = event.get("source_message_id")
    return f"c|{event['source']}|{msg_id}" if msg_id else None


def decide(event: dict[str, Any], seen: MutableMapping[str, str], now_s: float, window_s: float) -> DedupeDecision:
    """Decide and record. ``seen`` maps key -> "<content hash>|<first seen epoch s>"."""
    digest = content_hash(event)
    ckey = control_key(event)
    hkey = f"h|{digest}"

    def fresh(key: str) -> str | None:
        value = seen.get(key)
        if value is None:
            return None
        stored_hash, _, ts = value.partition("|")
        return stored_hash if now_s - float(ts or 0) <= window_s else None

    stamp = f"{digest}|{now_s:.3f}"
    prior = fresh(ckey) if ckey is not None else None
    if prior == digest:
        return DedupeDecision("drop", "duplicate-control-id", digest)
    if fresh(hkey) is not None:
        # the same clinical content was seen (under another control id, or re-used ids in between)
        if ckey is not None:
            seen[ckey] = stamp
        return DedupeDecision("drop", "duplicate-content", digest)
    if ckey is not None:
        seen[ckey] = stamp
    seen[hkey] = stamp
    if prior is not None:
        # same control id, different content: a sender bug - forward both, flag the second
        return DedupeDecision("forward", "control-id-reused", digest)
    return DedupeDecision("forward", "new", digest)
