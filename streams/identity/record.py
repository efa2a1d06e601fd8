"""The patient record the MPI matches on, and its construction from a FHIR R4 Patient.

A :class:`PatientRecord` is one source system's view of a person. It keeps raw-ish values
(trimmed strings); normalisation happens once when the engine computes match features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streams.identity import normalize

SSN_SYSTEM = "http://hl7.org/fhir/sid/us-ssn"
# Identifier type codes (HL7 v2 table 0203) the engine understands.
TYPE_MRN = "MR"
TYPE_SSN = "SS"
TYPE_MEMBER = "MB"


@dataclass(frozen=True, slots=True)
class Identifier:
    """A source identifier: ``system`` is the assigning authority (FHIR ``Identifier.system``)."""

    system: str
    value: str
    type: str = ""

    def key(self) -> str:
        return f"{self.system}|{self.value}"


@dataclass(frozen=True, slots=True)
class PatientRecord:
    record_id: str
    source: str
    identifiers: tuple[Identifier, ...] = ()
    family: str = ""
    given: str = ""
    birth_date: str = ""  # ISO 8601 (YYYY-MM-DD) or YYYYMMDD
    sex: str = ""
    address_line: str = ""
    address_line2: str = ""
    city: str = ""
    state: str = ""
    postal_code: str = ""
    phone: str = ""
    ssn: str = ""  # full SSN when known (9 digits in the US; FEBRL uses 7)
    ssn_last4: str = ""
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def effective_ssn_last4(self) -> str:
        if self.ssn_last4:
            return normalize.digits(self.ssn_last4)[-4:]
        full = normalize.ssn(self.ssn)
        return full[-4:] if full else ""


def _first(items: Any) -> Any:
    return items[0] if isinstance(items, list) and items else None


def _pick_name(names: list[dict[str, Any]]) -> dict[str, Any]:
    """Prefer the 'official' then 'usual' name; old/maiden names are not the current identity."""
    for use in ("official", "usual", None):
        for n in names:
            if n.get("use") == use or (use is None and n.get("use") not in {"old", "maiden"}):
                return n
    return names[0] if names else {}


def _pick_by_use(items: list[dict[str, Any]], preferred: tuple[str, ...]) -> dict[str, Any]:
    for use in preferred:
        for item in items:
            if item.get("use") == use:
                return item
    return items[0] if items else {}


def _identifier_type(ident: dict[str, Any]) -> str:
    coding = _first((ident.get("type") or {}).get("coding"))
    return str(coding.get("code", "")) if isinstance(coding, dict) else ""


def from_fhir_patient(resource: dict[str, Any], source: str) -> PatientRecord:
    """Build a :class:`PatientRecord` from a plain FHIR R4 Patient JSON dict.

    SSN is taken from an identifier with system ``http://hl7.org/fhir/sid/us-ssn`` or type
    code ``SS``; it is kept out of ``identifiers`` because it is a demographic the
    probabilistic model scores (and a configurable strong identifier), not an assigning
    authority's key.
    """
    if resource.get("resourceType", "Patient") != "Patient":
        raise ValueError(f"expected a Patient resource, got {resource.get('resourceType')!r}")
    identifiers: list[Identifier] = []
    ssn = ""
    for ident in resource.get("identifier") or []:
        value = str(ident.get("value") or "").strip()
        if not value:
            continue
        system = str(ident.get("system") or "").strip()
        type_code = _identifier_type(ident)
        if system == SSN_SYSTEM or type_code == TYPE_SSN:
            ssn = normalize.ssn(value)
            continue
        if not system:
            # An identifier without an assigning authority cannot be linked deterministically
            # across sources; scope it to the sending source so it still links within it.
            system = f"urn:clinstream:source:{source}"
        identifiers.append(Identifier(system=system, value=value, type=type_code))

    name = _pick_name(resource.get("name") or [])
    given_list = name.get("given") or []
    given = str(given_list[0]) if given_list else ""
    address = _pick_by_use(resource.get("address") or [], ("home", "temp"))
    lines = address.get("line") or []
    telecoms = [t for t in resource.get("telecom") or [] if t.get("system") == "phone" and t.get("value")]
    phone = _pick_by_use(telecoms, ("mobile", "home", "work")).get("value", "") if telecoms else ""
    return PatientRecord(
        record_id=str(resource.get("id") or (identifiers[0].key() if identifiers else "")),
        source=source,
        identifiers=tuple(identifiers),
        family=str(name.get("family") or ""),
        given=given,
        birth_date=str(resource.get("birthDate") or ""),
        sex=str(resource.get("gender") or ""),
        address_line=str(lines[0]) if lines else "",
        address_line2=" ".join(str(x) for x in lines[1:]),
        city=str(address.get("city") or ""),
        state=str(address.get("state") or ""),
        postal_code=str(address.get("postalCode") or ""),
        phone=str(phone),
        ssn=ssn,
        ssn_last4=ssn[-4:] if ssn else "",
    )


def to_fhir_patient(record: PatientRecord) -> dict[str, Any]:
    """Inverse of :func:`from_fhir_patient` (used by tests and the synthetic generator)."""
    resource: dict[str, Any] = {"resourceType": "Patient", "id": record.record_id}
    idents: list[dict[str, Any]] = [
        {"system": i.system, "value": i.value, "type": {"coding": [{"code": i.type}]}} for i in record.identifiers
    ]
    if record.ssn:
        idents.append({"system": SSN_SYSTEM, "value": record.ssn, "type": {"coding": [{"code": "SS"}]}})
    if idents:
        resource["identifier"] = idents
    if record.family or record.given:
        resource["name"] = [{"use": "official", "family": record.family, "given": [record.given]}]
    if record.birth_date:
        resource["birthDate"] = record.birth_date
    if record.sex:
        resource["gender"] = record.sex
    lines = [x for x in (record.address_line, record.address_line2) if x]
    if lines or record.city or record.postal_code:
        resource["address"] = [
            {
                "use": "home",
                "line": lines,
                "city": record.city,
                "state": record.state,
                "postalCode": record.postal_code,
            }
        ]
    if record.phone:
        resource["telecom"] = [{"system": "phone", "value": record.phone, "use": "home"}]
    return resource
