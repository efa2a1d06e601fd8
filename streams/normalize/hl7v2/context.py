"""Bundle-building state for one message: deterministic ids, de-duplicated shared resources."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from schemas.hl7v2.parser import Message, Rep
from streams.normalize.hl7v2 import datatypes as dt

# Fixed namespace so ids are stable across processes and releases.
NAMESPACE = uuid.UUID("6f1c1f52-8c1e-5d0e-9a53-3c2b1f0d7e41")

_NS_BYTES = NAMESPACE.bytes


_NS_SHA1 = hashlib.sha1(_NS_BYTES, usedforsecurity=False)
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def uuid5_str(name: str) -> str:
    """``str(uuid.uuid5(NAMESPACE, name))`` without the UUID object (hot path: ~25 ids/message)."""
    h = _NS_SHA1.copy()
    h.update(name.encode("utf-8", "surrogatepass"))
    x = h.hexdigest()
    # version nibble → 5, variant bits → 10xx
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:32]}"


# Resources that are "what the message is about" (MessageHeader.focus).
SUPPORTING = frozenset({"Practitioner", "Organization", "Location", "Provenance", "MessageHeader", "Device"})


class Ctx:
    """Collects resources for one message.

    Ids are uuid5 over ``source | <scope key>``: resources that identify a real
    world thing (Patient by its first identifier, Encounter by visit number,
    Practitioner/Organization/Location by their content) are stable across
    messages of that source, so a later A08 updates the same Patient id; the rest
    are scoped to the message (control id + content digest) and segment position.
    """

    def __init__(self, msg: Message, source: str, default_tz: str) -> None:
        self.msg = msg
        self.source = source
        self.default_tz = default_tz
        digest = hashlib.blake2b("\r".join(msg._lines).encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
        self.msg_key = f"{msg.control_id}|{digest}"
        self.resources: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self.patient: str | None = None
        self.encounter: str | None = None
        self.mtype, self.trigger, self.structure = msg.message_type

    # -- ids and registration -------------------------------------------------
    def make_id(self, key: str) -> str:
        return uuid5_str(f"{self.source}|{key}")

    def add(self, resource: dict[str, Any], key: str, *, scoped: bool = True) -> str:
        """Register ``resource`` (first one with a given id wins) and return its reference."""
        rtype = resource["resourceType"]
        rid = self.make_id(f"{self.msg_key}|{rtype}|{key}" if scoped else f"{rtype}|{key}")
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
        if not rep.raw:
            return None
        res: dict[str, Any] = {"resourceType": "Practitioner"}
        ident = rep.get(1)
        if ident:
            pid: dict[str, Any] = {"value": ident}
            system = dt.hd_system(rep.part(9))
            if system:
                pid["system"] = system
            type_code = rep.get(13)
            if type_code:
                pid["type"] = {"coding": [{"system": f"{dt.V2}0203", "code": type_code}]}
            res["identifier"] = [pid]
        name = dt.human_name(rep, xcn=True)
        if name:
            res["name"] = [name]
        if len(res) == 1:
            return None
        return self.add(res, f"{rep.get(1)}|{rep.get(9)}|{rep.get(2)}|{rep.get(3)}", scoped=False)

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
        ident = rep.get(10) or rep.get(3)
        return self.organization(rep.get(1), ident, dt.hd_system(rep.part(6)) if ident else None)

    def organization_hd(self, rep: Rep) -> str | None:
        """HD → Organization (namespace as name, universal id as identifier)."""
        if not rep.raw:
            return None
        universal = rep.get(2)
        system = "urn:ietf:rfc:3986" if universal else None
        value = f"urn:oid:{universal}" if universal and rep.get(3).upper() in ("ISO", "") else universal
        return self.organization(rep.get(1), value, system)

    def location(self, rep: Rep, physical: str | None = None) -> str | None:
        """PL → Location (one per distinct PL value)."""
        if not rep.raw:
            return None
        parts = [rep.get(i) for i in (4, 7, 8, 1, 2, 3)]  # facility, building, floor, unit, room, bed
        name = rep.get(9) or " ".join(p for p in parts if p)
        if not name:
            return None
        res: dict[str, Any] = {"resourceType": "Location", "name": name, "mode": "instance"}
        status = rep.get(5)
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
