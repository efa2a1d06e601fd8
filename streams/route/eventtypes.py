"""Event-type filters: ``*``, ``ADT^*``, ``ORU^R01`` (glob with ``*`` and ``?``), compiled once."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable

_CACHE_LIMIT = 4096


def compile_event_types(patterns: Iterable[str]) -> Callable[[str], bool]:
    """Return a predicate; results are memoised per event type because there are only a few dozen."""
    pats = [p.strip() for p in patterns if p and p.strip()]
    if any(p == "*" for p in pats):
        return _always
    exact = frozenset(p for p in pats if not any(c in p for c in "*?["))
    globs = [p for p in pats if p not in exact]
    rx = re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs)) if globs else None
    memo: dict[str, bool] = {}

    def matches(event_type: str) -> bool:
        hit = memo.get(event_type)
        if hit is None:
            hit = event_type in exact or (rx is not None and rx.match(event_type) is not None)
            if len(memo) < _CACHE_LIMIT:  # bounded: event types come from outside
                memo[event_type] = hit
        return hit

    return matches


def _always(event_type: str) -> bool:
    return True
