"""Bundle-building state for one message: deterministic ids, de-duplicated shared resources."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any, Final

from schemas.hl7v2.parser import Message, Rep
from streams.normalize.hl7v2 import datatypes as dt
from streams.normalize.hl7v2.tables import MEMO_MAX

# Fixed namespace so ids are stable across processes and releases.
NAMESPACE: Final = uuid.UUID("6f1c1f52-8c1e-5d0e-9a53-3c2b1f0d7e41")

_NS_BYTES: Final = NAMESPACE.bytes


_NS_SHA1: Final = hashlib.sha1(_NS_BYTES, usedforsecurity=False)
_VARIANT: Final[dict[str, str]] = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
# The counter part of message-scoped ids, formatted once (a constant table, not a cache of anything).
_COUNTERS: Final[list[str]] = [f"{i:08x}" for i in range(256)]


def uuid5_str(name: str) -> str:
    """``str(uuid.uuid5(NAMESPACE, name))`` without the UUID object (hot path: ~25 ids/message)."""
    h = _NS_SHA1.copy()
    h.update(name.encode("utf-8", "surrogatepass"))
    x: str = h.hexdigest()
    # version nibble → 5, variant bits → 10xx
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:32]}"


def _sha1_prefix(prefix: str) -> Any:
    """SHA-1 state after ``NAMESPACE + prefix``: hashing a tail from it equals ``uuid5_str(prefix + tail)``."""
    h = _NS_SHA1.copy()
    h.update(prefix.encode("utf-8", "surrogatepass"))
    return h


def _uuid5_from(state: Any, tail: str) -> str:
    h = state.copy()
    h.update(tail.encode("utf-8", "surrogatepass"))
    x: str = h.hexdigest()  # typed: the slices below compile to native string slicing
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:32]}"


# Per-source SHA-1 prefix states (keyed by the configured source name, not by message content; bounded).
_SOURCE_STATES: Final[dict[str, Any]] = {}

# Content-keyed ids of the resources that name a site's staff, organizations, places and devices
# ("<source>|<type>|<key>" → uuid5): the same few hundred recur in message after message, and each
# id costs a SHA-1 (about a tenth of a conversion).  Only these types: patients, visits and accounts
# are keyed by patient data and are not kept.  Bounded; past the bound, ids are computed, not stored.
_SHARED_TYPES: Final = frozenset({"Practitioner", "Organization", "Location", "Device"})
_SHARED_IDS: Final[dict[str, str]] = {}
_SHARED_IDS_MAX: Final = 4 * MEMO_MAX


# PL components (0-based) that name a location without PL.9, in the order they are joined.
_PL_NAME_PARTS: Final[tuple[int, ...]] = (3, 6, 7, 0, 1, 2)

# Resources that are "what the message is about" (MessageHeader.focus).
SUPPORTING: Final = frozenset({"Practitioner", "Organization", "Location", "Provenance", "MessageHeader", "Device"})


class Ctx:
    """Collects resources for one message.

    Resources that identify a real world thing (Patient by its first identifier,
    Encounter by visit number, Practitioner/Organization/Location by their
    content) get ``uuid5(NAMESPACE, f"{source}|{type}|{key}")``, stable across
    messages of that source, so a later A08 updates the same Patient id.

    The rest (and the Bundle) are scoped to the message: one SHA-1 per message
    over ``NAMESPACE + source | control id | message text`` gives 88 bits, and the
    last 32 bits number the message's distinct scoped keys in the order they are
    first registered (so the same bytes + source always give the same ids, and
    re-registering a key gives the same id).  These are RFC 9562 version-8
    (custom) UUIDs: ``xxxxxxxx-xxxx-8xxx-Vxxx-xxxxNNNNNNNN``.
    """

    def __init__(self, msg: Message, source: str, default_tz: str) -> None:
        self.msg = msg
        self.source = source
        self.default_tz = default_tz
        self.resources: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self.patient: str | None = None
        self.encounter: str | None = None
        self.mtype, self.trigger, self.structure = msg.message_type
        state = _SOURCE_STATES.get(source)
        if state is None:
            state = _sha1_prefix(f"{source}|")
            if len(_SOURCE_STATES) < 256:
                _SOURCE_STATES[source] = state
        self._source_state = state
        h = state.copy()
        h.update(f"{msg.control_id}|".encode("utf-8", "surrogatepass"))
        h.update("\r".join(msg._lines).encode("utf-8", "surrogatepass"))
        x: str = h.hexdigest()
        # version nibble → 8 (custom), variant bits → 10xx; the 8 hex digits after it are the counter.
        self._id_prefix = f"{x[:8]}-{x[8:12]}-8{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:24]}"
        self._scoped_ids: dict[str, str] = {}
        # XCN value → Practitioner reference ("" for none), for this message only: the same XCN
        # (an attending doctor in PV1-7 and ORC-12, ...) maps to the same resource every time.
        self._practitioners: dict[str, str] = {}

    # -- ids and registration -------------------------------------------------
    def make_id(self, key: str) -> str:
        """``uuid5(NAMESPACE, f"{source}|{key}")`` as a string."""
        return _uuid5_from(self._source_state, key)

    def scoped_id(self, key: str) -> str:
        """The id of ``key`` within this message (see the class docstring)."""
        ids = self._scoped_ids
        rid = ids.get(key)
        if rid is None:
            n = len(ids)
            rid = ids[key] = self._id_prefix + (_COUNTERS[n] if n < 256 else f"{n:08x}")
        return rid

    def add(self, resource: dict[str, Any], key: str, *, scoped: bool = True) -> str:
        """Register ``resource`` (first one with a given id wins) and return its reference."""
        rtype = resource["resourceType"]
        if scoped:
            rid = self.scoped_id(f"{rtype}|{key}")
        elif rtype in _SHARED_TYPES:
            memo_key = f"{self.source}|{rtype}|{key}"
            known = _SHARED_IDS.get(memo_key)
            if known is None:
                known = _uuid5_from(self._source_state, f"{rtype}|{key}")
                if len(_SHARED_IDS) < _SHARED_IDS_MAX:
                    _SHARED_IDS[memo_key] = known
            rid = known
        else:
            rid = _uuid5_from(self._source_state, f"{rtype}|{key}")
        ref = f"urn:uuid:{rid}"
        if ref not in self.resources:
            resource["id"] = rid
            self.resources[ref] = resource
            self.order.append(ref)
        return ref

    def get(self, ref: str | None) -> dict[str, Any] | None:
        return self.resources.get(ref) if ref else None

    # -- shared resources -----------------------------------------------------
    def practitioner(self, rep: Rep) -> str | None:
        """XCN → Practitioner (de-duplicated on id + authority + name)."""
        raw = rep.raw
        if not raw:
            return None
        known = self._practitioners.get(raw)
        if known is None:
            known = self._practitioners[raw] = self._practitioner(rep) or ""
        return known or None

    def _practitioner(self, rep: Rep) -> str | None:
        res: dict[str, Any] = {"resourceType": "Practitioner"}
        v = rep.vals()  # v[i] == rep.get(i + 1)
        ident = v[0]
        if ident:
            pid: dict[str, Any] = {"value": ident}
            system = dt._hd_system_raw(rep.raw_comp(9), rep)
            if system:
                pid["system"] = system
            type_code = v[12]
            if type_code:
                pid["type"] = {"coding": [{"system": f"{dt.V2}0203", "code": type_code}]}
            res["identifier"] = [pid]
        name = dt.human_name(rep, xcn=True)
        if name:
            res["name"] = [name]
        if len(res) == 1:
            return None
        return self.add(res, f"{ident}|{v[8]}|{v[1]}|{v[2]}", scoped=False)

    def organization(self, name: str, ident: str = "", system: str | None = None) -> str | None:
        if not name and not ident:
            return None
        res: dict[str, Any] = {"resourceType": "Organization"}
        if ident:
            oid: dict[str, Any] = {"value": ident}
            if system:
                oid["system"] = system
            res["identifier"] = [oid]
        if name:
            res["name"] = name
        return self.add(res, f"{ident}|{system}|{name}", scoped=False)

    def organization_xon(self, rep: Rep) -> str | None:
        """XON (name ^ ... ^ id number(3) ^ ... ^ assigning authority(6) ^ ... ^ identifier(10))."""
        if not rep.raw:
            return None
        v = rep.vals()
        ident = v[9] or v[2]
        return self.organization(v[0], ident, dt.hd_system(rep.part(6)) if ident else None)

    def organization_hd(self, rep: Rep) -> str | None:
        """HD → Organization (namespace as name, universal id as identifier)."""
        if not rep.raw:
            return None
        v = rep.vals()
        universal = v[1]
        system = "urn:ietf:rfc:3986" if universal else None
        value = f"urn:oid:{universal}" if universal and v[2].upper() in ("ISO", "") else universal
        return self.organization(v[0], value, system)

    def location(self, rep: Rep, physical: str | None = None) -> str | None:
        """PL → Location (one per distinct PL value)."""
        if not rep.raw:
            return None
        v = rep.vals()  # v[i] == rep.get(i + 1)
        name = v[8]
        if not name:  # facility, building, floor, unit, room, bed
            parts: list[str] = []
            for i in _PL_NAME_PARTS:
                if v[i]:
                    parts.append(v[i])
            if not parts:
                return None
            name = " ".join(parts)
        res: dict[str, Any] = {"resourceType": "Location", "name": name, "mode": "instance"}
        status = v[4]
        if status:
            res["operationalStatus"] = {"system": f"{dt.V2}0116", "code": status}
        if physical:
            res["physicalType"] = {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/location-physical-type",
                            "code": physical}]
            }
        return self.add(res, rep.raw, scoped=False)

    def device(self, name: str) -> str | None:
        if not name:
            return None
        return self.add({"resourceType": "Device", "deviceName": [{"name": name, "type": "user-friendly-name"}]},
                        name, scoped=False)
