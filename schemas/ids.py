"""Name-based UUIDs (RFC 9562 version 5) as strings, without building ``uuid.UUID`` objects.

Event ids, EUIDs, audit and task ids are uuid5s minted on the hot path; ``uuid.uuid5``
builds a UUID object (and its int) only for us to format it again. Same values, a few
times cheaper. (The HL7 v2 mapper keeps its own, compiled, prefix-state variant:
``streams/normalize/hl7v2/context.py``.)
"""

from __future__ import annotations

import hashlib
import uuid

__all__ = ["uuid5_hex", "uuid5_str"]

# The variant digit: its top two bits become 10 (RFC 4122/9562), the low two are kept.
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def _digest(namespace: uuid.UUID, name: str) -> str:
    return hashlib.sha1(namespace.bytes + name.encode(), usedforsecurity=False).hexdigest()


def uuid5_str(namespace: uuid.UUID, name: str) -> str:
    """``str(uuid.uuid5(namespace, name))``."""
    h = _digest(namespace, name)
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def uuid5_hex(namespace: uuid.UUID, name: str) -> str:
    """``uuid.uuid5(namespace, name).hex``."""
    h = _digest(namespace, name)
    return f"{h[:12]}5{h[13:16]}{_VARIANT[h[16]]}{h[17:32]}"
