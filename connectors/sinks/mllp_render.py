"""Projected FHIR R4 resources → one outbound HL7 v2 ADT message (the MLLP sink's payload).

The reverse of the normalize stage's PID/PV1 maps (v2-to-FHIR IG), kept here because
connectors never import streams. Pure functions, no I/O.

Rules:

- Only ADT events that still carry a Patient after projection are rendered. Anything else
  (ORU, SIU, a destination whose projection dropped the Patient, merges that would need an
  MRG segment) raises :class:`RenderError`; the sink turns that into ``SinkRejected`` so
  the record goes to ``dlq.sink`` with the reason instead of sending a half-empty message
  a legacy receiver would either refuse or, worse, file against nobody.
- Only what the projection left in is sent: a field absent from the resources is empty
  in the message, never filled from the envelope or defaults.
- Rendering is deterministic: MSH-10 comes from the event id and MSH-7 from the event's
  ``received_at``, so the same event always yields the same bytes — a resend (after a
  timeout, a runner retry or a restart) carries the same control id and the receiver can
  drop it as a duplicate.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from schemas.hl7v2.parser import Encoding, escape

ENC = Encoding("|", "^~\\&")
_FS, _CS, _RS, _SS = ENC.field, ENC.comp, ENC.rep, ENC.sub

# Identifier.system prefix the normalize stage gives an HD namespace without a universal id.
LOCAL_SYSTEM_BASE = "urn:clinstream:v2:ns:"

# v2.5 message structures (table 0354) of the ADT triggers we render; others map to ADT_<trigger>.
_STRUCTURE = {
    "A01": "ADT_A01", "A04": "ADT_A01", "A08": "ADT_A01", "A13": "ADT_A01",
    "A02": "ADT_A02", "A03": "ADT_A03",
    "A05": "ADT_A05", "A14": "ADT_A05", "A28": "ADT_A05", "A31": "ADT_A05",
    "A06": "ADT_A06", "A07": "ADT_A06",
    "A09": "ADT_A09", "A10": "ADT_A09", "A11": "ADT_A09",
    "A21": "ADT_A21", "A22": "ADT_A21", "A23": "ADT_A21", "A25": "ADT_A21", "A26": "ADT_A21",
    "A27": "ADT_A21", "A29": "ADT_A21", "A32": "ADT_A21", "A33": "ADT_A21",
}
# Merge / link triggers need MRG (prior identifiers), which a projected Patient cannot supply.
_NEEDS_MRG = frozenset({"A18", "A30", "A34", "A35", "A36", "A37", "A39", "A40", "A41", "A42", "A44",
                        "A46", "A47", "A48", "A49", "A50", "A51"})

_GENDER = {"male": "M", "female": "F", "other": "O", "unknown": "U"}
_NAME_USE = {"official": "L", "usual": "D", "maiden": "M", "nickname": "N", "anonymous": "S", "temp": "T"}
_ADDRESS_USE = {"home": "H", "work": "O", "temp": "C", "billing": "B"}
# v3 ActCode encounter class → v2 patient class (table 0004); inverse of the IG's table map.
_PATIENT_CLASS = {"IMP": "I", "ACUTE": "I", "NONAC": "I", "EMER": "E", "AMB": "O", "PRENC": "P",
                  "OBSENC": "O", "SS": "O", "HH": "O", "VR": "O", "FLD": "O", "UNK": "U"}
_V2_TABLE_0004 = "http://terminology.hl7.org/CodeSystem/v2-0004"
_FHIR_DATETIME = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


class RenderError(ValueError):
    """This event has no HL7 v2 rendering (the reason is safe to log: no PHI)."""


@dataclass(frozen=True, slots=True)
class Header:
    """MSH values from the sink options."""

    sending_app: str = "CLINSTREAM"
    sending_facility: str = ""
    receiving_app: str = ""
    receiving_facility: str = ""
    version: str = "2.5"
    processing_id: str = "P"


@dataclass(frozen=True, slots=True)
class Rendered:
    control_id: str
    message_type: str
    payload: bytes


def control_id_for(event_id: str) -> str:
    """MSH-10: 20 hex chars (the v2.5 ST length limit) of sha1(event id) — stable across resends."""
    return hashlib.sha1(event_id.encode(), usedforsecurity=False).hexdigest()[:20].upper()


def _e(value: Any) -> str:
    return escape(str(value), ENC) if value not in (None, "") else ""


def _join(parts: list[str], sep: str) -> str:
    """Join components, dropping trailing empties (``a^b^^`` → ``a^b``)."""
    while parts and not parts[-1]:
        parts.pop()
    return sep.join(parts)


def v2_ts(value: str | None) -> str:
    """FHIR date/dateTime/instant → v2 DTM (``2024-05-01T10:00:00Z`` → ``20240501100000+0000``)."""
    if not value:
        return ""
    m = _FHIR_DATETIME.match(value.strip())
    if m is None:
        raise RenderError(f"unreadable FHIR date/time of {len(value)} characters")
    year, month, day, hh, mi, ss, frac, tz = m.groups()
    out = year + (month or "") + (day or "") + (hh or "") + (mi or "") + (ss or "") + (frac or "")
    if tz:
        out += "+0000" if tz == "Z" else tz.replace(":", "")
    return out


def assigning_authority(system: str | None) -> str:
    """Identifier.system → CX.4 HD (subcomponents), the inverse of the normalize stage's mapping."""
    if not system:
        return ""
    if system.startswith(LOCAL_SYSTEM_BASE):
        return _e(unquote(system[len(LOCAL_SYSTEM_BASE):]))
    if system.startswith("urn:oid:"):
        return _join(["", _e(system[8:]), "ISO"], _SS)
    if system.startswith("urn:uuid:"):
        return _join(["", _e(system[9:]), "UUID"], _SS)
    return _join(["", _e(system), "URI"], _SS)


def _first_code(concept: Any) -> str:
    if isinstance(concept, dict):
        for coding in concept.get("coding") or []:
            if isinstance(coding, dict) and coding.get("code"):
                return str(coding["code"])
    return ""


def cx(identifier: dict[str, Any]) -> str:
    """Identifier → CX (value ^^^ assigning authority ^ identifier type)."""
    value = identifier.get("value")
    if not value:
        return ""
    return _join([_e(value), "", "", assigning_authority(identifier.get("system")),
                  _e(_first_code(identifier.get("type")))], _CS)


def xpn(name: dict[str, Any]) -> str:
    given = [str(g) for g in name.get("given") or [] if g]
    family = name.get("family") or ""
    if not family and not given:
        family = name.get("text") or ""  # XPN has no free-text component: the text is the name
    return _join([
        _e(family), _e(given[0] if given else ""), _e(" ".join(given[1:])),
        _e(" ".join(str(s) for s in name.get("suffix") or [])),
        _e(" ".join(str(p) for p in name.get("prefix") or [])), "",
        _NAME_USE.get(str(name.get("use", "")), ""),
    ], _CS)


def xad(address: dict[str, Any]) -> str:
    lines = [str(line) for line in address.get("line") or [] if line]
    kind = "M" if address.get("type") == "postal" else _ADDRESS_USE.get(str(address.get("use", "")), "")
    return _join([
        _e(lines[0] if lines else ""), _e(", ".join(lines[1:])), _e(address.get("city")),
        _e(address.get("state")), _e(address.get("postalCode")), _e(address.get("country")), kind,
    ], _CS)


def xtn(contact: dict[str, Any]) -> str:
    value = contact.get("value")
    if not value:
        return ""
    use = "WPN" if contact.get("use") == "work" else "PRN"
    system = contact.get("system")
    if system == "email":
        return _join(["", "NET", "Internet", _e(value)], _CS)
    equipment = {"phone": "CP" if contact.get("use") == "mobile" else "PH", "fax": "FX",
                 "pager": "BP"}.get(str(system), "")
    return _join([_e(value), use, equipment], _CS)


def _reps(items: list[str]) -> str:
    return _RS.join(i for i in items if i)


def _segment(sid: str, fields: list[str]) -> str:
    return _join([sid, *fields], _FS)


def pid(patient: dict[str, Any]) -> str:
    telecom = [t for t in patient.get("telecom") or [] if isinstance(t, dict)]
    fields = [""] * 14
    fields[0] = "1"
    fields[2] = _reps([cx(i) for i in patient.get("identifier") or [] if isinstance(i, dict)])
    fields[4] = _reps([xpn(n) for n in patient.get("name") or [] if isinstance(n, dict)])
    fields[6] = v2_ts(patient.get("birthDate"))
    fields[7] = _GENDER.get(str(patient.get("gender", "")), "")
    fields[10] = _reps([xad(a) for a in patient.get("address") or [] if isinstance(a, dict)])
    fields[12] = _reps([xtn(t) for t in telecom if t.get("use") != "work"])
    fields[13] = _reps([xtn(t) for t in telecom if t.get("use") == "work"])
    return _segment("PID", fields)


def patient_class(encounter: dict[str, Any]) -> str:
    cls = encounter.get("class")
    if not isinstance(cls, dict):
        return ""
    code = str(cls.get("code") or "")
    if cls.get("system") == _V2_TABLE_0004:
        return _e(code)
    return _PATIENT_CLASS.get(code, "")


def pv1(encounter: dict[str, Any] | None) -> str:
    if encounter is None:
        # The ADT structures require PV1; "N" (table 0004: not applicable) says there is no visit
        # rather than inventing one.
        return _segment("PV1", ["1", "N"])
    fields = [""] * 45
    fields[0] = "1"
    fields[1] = patient_class(encounter)
    idents = [i for i in encounter.get("identifier") or [] if isinstance(i, dict)]
    fields[18] = cx(idents[0]) if idents else ""
    period = encounter.get("period") or {}
    fields[43] = v2_ts(period.get("start"))
    fields[44] = v2_ts(period.get("end"))
    return _segment("PV1", fields)


def _first(resources: list[Any], rtype: str) -> dict[str, Any] | None:
    for res in resources:
        if isinstance(res, dict) and res.get("resourceType") == rtype:
            return res
    return None


def message_type(event_type: str) -> tuple[str, str]:
    """(MSH-9 value, trigger) for an ADT event type; RenderError for anything else."""
    parts = event_type.split("^")
    if len(parts) < 2 or parts[0] != "ADT" or not re.fullmatch(r"A\d{2}", parts[1]):
        raise RenderError(f"no HL7 v2 rendering for {event_type or '(no event_type)'}")
    trigger = parts[1]
    if trigger in _NEEDS_MRG:
        raise RenderError(f"no HL7 v2 rendering for {event_type} (needs MRG prior identifiers)")
    structure = parts[2] if len(parts) > 2 and parts[2] else _STRUCTURE.get(trigger, f"ADT_{trigger}")
    return _CS.join(("ADT", trigger, structure)), trigger


def render_event(event: dict[str, Any], header: Header) -> Rendered:
    """One ADT message (MSH, EVN, PID, PV1), CR-separated, UTF-8."""
    event_type = str(event.get("event_type") or "")
    msh9, trigger = message_type(event_type)
    resources = event.get("resources") or []
    patient = _first(resources, "Patient")
    if patient is None:
        raise RenderError(f"no HL7 v2 rendering for {event_type} without a Patient resource")
    event_id = str(event.get("event_id") or "")
    if not event_id:
        raise RenderError("event has no event_id to derive the message control id from")
    control_id = control_id_for(event_id)
    segments = [
        "MSH" + _FS + ENC.chars + _FS + _FS.join([
            _e(header.sending_app), _e(header.sending_facility), _e(header.receiving_app),
            _e(header.receiving_facility), v2_ts(event.get("received_at")), "", msh9, control_id,
            _e(header.processing_id), _e(header.version),
        ]),
        _segment("EVN", [_e(trigger), v2_ts(event.get("occurred_at"))]),
        pid(patient),
        pv1(_first(resources, "Encounter")),
    ]
    text = "\r".join(segments) + "\r"
    if not text.isascii():
        # Declare the charset only when needed: some legacy receivers reject any MSH-18.
        segments[0] += _FS * 6 + "UNICODE UTF-8"
        text = "\r".join(segments) + "\r"
    return Rendered(control_id, msh9, text.encode("utf-8"))
