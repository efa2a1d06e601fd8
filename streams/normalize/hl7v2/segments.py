"""Segment mappers (v2-to-FHIR IG segment maps), driven in message order by :class:`Mapper`.

Each ``seg_<ID>`` method maps one segment.  Message structure (which OBX belongs
to which OBR, which RXR to which RXA, where an NTE goes) is tracked with a few
"current" references instead of a full group parse: v2 groups are ordered, so
the most recent ORC/OBR/SPM/RXA/TXA is the parent of what follows.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any, Final

from schemas.hl7v2.errors import Hl7ParseError
from schemas.hl7v2.parser import Rep, Segment
from streams.normalize.hl7v2 import datatypes as dt
from streams.normalize.hl7v2.context import Ctx
from streams.normalize.hl7v2.tables import V2, V3_ACT_CODE, V3_MARITAL, V3_ROLE_CODE, coding_system, lookup

# Resource types that carry an ``note`` (Annotation) element NTE can land in.
_NOTE_TARGETS: Final = frozenset(
    {"Observation", "ServiceRequest", "Immunization", "Procedure", "Condition",
     "AllergyIntolerance", "MedicationRequest", "MedicationDispense", "Specimen"}
)
_CONDITION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/condition-category"
_CONDITION_CLINICAL: Final = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_CONDITION_VERIFICATION: Final = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_ALLERGY_CLINICAL: Final = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
_SUBSCRIBER_RELATIONSHIP: Final = "http://terminology.hl7.org/CodeSystem/subscriber-relationship"
_RESULT_MESSAGES: Final = frozenset({"ORU", "OUL", "OSU", "ORL", "MDM"})
_MERGE_PATIENT_EVENTS: Final = frozenset({"A18", "A30", "A34", "A35", "A36", "A39", "A40", "A46", "A47", "A48", "A49"})
_MERGE_ACCOUNT_EVENTS: Final = frozenset({"A41", "A42", "A44"})
_MERGE_VISIT_EVENTS: Final = frozenset({"A45", "A50", "A51"})
# Field tables of the segment maps, as module constants (a tuple literal in a loop header is
# rebuilt and, compiled, iterated generically on every call).
_ORDER_ID_FIELDS: Final[tuple[tuple[int, str], ...]] = ((2, "PLAC"), (3, "FILL"))  # ORC/OBR placer, filler
_PV1_LOCATIONS: Final[tuple[tuple[int, str, bool], ...]] = (  # field, Encounter.location status, temporary
    (3, "active", False), (6, "completed", False), (11, "active", True), (42, "planned", False),
    (43, "completed", True))
_PV1_PARTICIPANTS: Final[tuple[tuple[int, str, str], ...]] = (  # field, v3 ParticipationType code, display
    (7, "ATND", "attender"), (8, "REF", "referrer"), (9, "CON", "consultant"), (17, "ADM", "admitter"))
_PV1_HOSPITALIZATION: Final[tuple[tuple[int, str, str], ...]] = (  # field, Encounter.hospitalization key, table
    (13, "reAdmission", "0092"), (14, "admitSource", "0023"), (36, "dischargeDisposition", "0112"))
_SIU_STATUS: Final = {"S12": "booked", "S13": "booked", "S14": "booked", "S15": "cancelled", "S16": "cancelled",
               "S17": "entered-in-error", "S26": "noshow"}


def _collect(fn: Callable[[Rep], Any], reps: list[Rep]) -> list[Any]:
    """``[x for x in map(fn, reps) if x]`` without the generator frames."""
    out = []
    for r in reps:
        x = fn(r)
        if x:
            out.append(x)
    return out


# The mapped, non-empty repetitions of a field, one helper per data type: compiled, a direct call
# of the mapper instead of calling a function object through the Python call protocol.
def _identifiers(reps: list[Rep]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for r in reps:
        x = dt.identifier(r)
        if x:
            out.append(x)
    return out


def _names(reps: list[Rep]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for r in reps:
        x = dt.human_name(r)
        if x:
            out.append(x)
    return out


def _addresses(reps: list[Rep]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for r in reps:
        x = dt.address(r)
        if x:
            out.append(x)
    return out


def _telecoms(reps: list[Rep], default_use: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for r in reps:
        x = dt.contact_point(r, default_use)
        if x:
            out.append(x)
    return out


def _codeables(reps: list[Rep]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for r in reps:
        x = dt.codeable(r)
        if x:
            out.append(x)
    return out


def _drop_empty(d: dict[str, Any]) -> dict[str, Any]:
    """Remove the None / "" / [] / {} values of ``d`` in place (0 and False stay); returns ``d``.

    In place, not a filtered copy: most resources have few or no empty elements
    (mappers skip most absent values), so usually nothing is deleted.
    """
    empty: list[str] | None = None
    for k, v in d.items():
        if not v and (v is None or (isinstance(v, (str, list, dict)))):
            if empty is None:
                empty = [k]
            else:
                empty.append(k)
    if empty is not None:
        for k in empty:
            del d[k]
    return d


class Mapper:
    """Maps the segments of one message into ``ctx``."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.last: str | None = None  # target for NTE
        self.orc: Segment | None = None
        self.order: str | None = None  # current ServiceRequest
        self.report: str | None = None  # current DiagnosticReport
        self.specimen: str | None = None
        self.med: str | None = None  # current MedicationRequest / Immunization / MedicationDispense (RXR)
        self.medreq: str | None = None
        self.doc: str | None = None  # current DocumentReference (MDM)
        self.appointment: str | None = None
        self.account: str | None = None
        self.provenance: str | None = None
        self.handlers = _HANDLERS
        self.focus: list[str] = []  # focus resources, set when the MessageHeader is built

    # -- primitive helpers with error location ------------------------------
    def _wrap(self, seg: Segment, n: int, fn: Callable[[str], Any], value: str) -> Any:
        try:
            return fn(value)
        except dt.DataTypeError as exc:
            raise Hl7ParseError(str(exc), segment_index=seg.index, segment_id=seg.id, field=n) from None

    def ts(self, seg: Segment, n: int, rep: int = 0, comp: int = 1) -> str | None:
        value = seg.get(n, rep, comp)
        if not value:
            return None
        try:
            return dt.datetime_(value, self.ctx.default_tz)
        except dt.DataTypeError as exc:
            raise Hl7ParseError(str(exc), segment_index=seg.index, segment_id=seg.id, field=n) from None

    def day(self, seg: Segment, n: int, rep: int = 0, comp: int = 1) -> str | None:
        value = seg.get(n, rep, comp)
        if not value:
            return None
        try:
            return dt.date(value)
        except dt.DataTypeError as exc:
            raise Hl7ParseError(str(exc), segment_index=seg.index, segment_id=seg.id, field=n) from None

    def inst(self, seg: Segment, n: int, rep: int = 0, comp: int = 1) -> str | None:
        value = seg.get(n, rep, comp)
        if not value:
            return None
        try:
            return dt.instant(value, self.ctx.default_tz)
        except dt.DataTypeError as exc:
            raise Hl7ParseError(str(exc), segment_index=seg.index, segment_id=seg.id, field=n) from None

    def _padded_instant(self, seg: Segment, n: int) -> str | None:
        try:
            return dt.instant_padded(seg.get(n), self.ctx.default_tz)
        except dt.DataTypeError as exc:
            raise Hl7ParseError(str(exc), segment_index=seg.index, segment_id=seg.id, field=n) from None

    def num(self, seg: Segment, n: int, rep: int = 0, comp: int = 1) -> int | float | None:
        value = seg.get(n, rep, comp)
        if not value:
            return None
        try:
            return dt.number(value)
        except dt.DataTypeError as exc:
            raise Hl7ParseError(str(exc), segment_index=seg.index, segment_id=seg.id, field=n) from None

    def ts_value(self, seg: Segment, n: int, value: str) -> str | None:
        if not value:
            return None
        try:
            return dt.datetime_(value, self.ctx.default_tz)
        except dt.DataTypeError as exc:
            raise Hl7ParseError(str(exc), segment_index=seg.index, segment_id=seg.id, field=n) from None

    def cc(self, seg: Segment, n: int, rep: int = 0) -> dict[str, Any] | None:
        reps = seg.repetitions(n)
        return dt.codeable(reps[rep]) if 0 <= rep < len(reps) else None  # codeable(absent) is None

    def ccs(self, seg: Segment, n: int) -> list[dict[str, Any]]:
        return _codeables(seg.repetitions(n))

    def practitioners(self, seg: Segment, n: int) -> list[str]:
        out: list[str] = []
        ctx = self.ctx
        for r in seg.repetitions(n):  # a direct (compiled: native) call, no bound method per call
            ref = ctx.practitioner(r)
            if ref:
                out.append(ref)
        return out

    def subject(self) -> dict[str, str] | None:
        return {"reference": self.ctx.patient} if self.ctx.patient else None

    def enc_ref(self) -> dict[str, str] | None:
        return {"reference": self.ctx.encounter} if self.ctx.encounter else None

    def run(self, seg: Segment) -> None:
        handler = self.handlers.get(seg.id)
        if handler is not None:
            handler(self, seg)

    # -- patient administration ---------------------------------------------
    def seg_PID(self, seg: Segment) -> None:
        ctx = self.ctx
        idents = _identifiers(seg.repetitions(3))
        idents += _identifiers(seg.repetitions(2))  # v2.3 external id
        idents += _identifiers(seg.repetitions(4))  # alternate id
        ssn = seg.get(19)
        if ssn:
            ssn_ident = dt.typed_identifier(ssn, "SS", "http://hl7.org/fhir/sid/us-ssn")
            if ssn_ident:
                idents.append(ssn_ident)
        dl = seg.rep(20)
        if dl.get(1):
            ident = dt.typed_identifier(dl.get(1), "DL", dt.local_system(dl.get(2)) if dl.get(2) else None)
            if ident:
                if dl.get(3):
                    ident["period"] = {"end": self.day(seg, 20, 0, 3)}
                idents.append(ident)
        patient: dict[str, Any] = {"resourceType": "Patient"}
        patient["identifier"] = idents
        patient["name"] = _names(seg.repetitions(5))
        mother = seg.rep(6)
        if mother.raw:
            maiden = dt.human_name(mother)
            if maiden:
                maiden["use"] = "maiden"
                patient["extension"] = [{
                    "url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
                    "valueString": maiden.get("family", ""),
                }] if maiden.get("family") else []
        patient["birthDate"] = self.day(seg, 7)
        gender = lookup("0001-gender", seg.get(8))
        if gender:
            patient["gender"] = gender
        patient["address"] = _addresses(seg.repetitions(11))
        telecom = _telecoms(seg.repetitions(13), "home")
        telecom += _telecoms(seg.repetitions(14), "work")
        patient["telecom"] = telecom
        language = dt.codeable(seg.rep(15))
        if language:
            patient["communication"] = [{"language": language, "preferred": True}]
        marital = seg.get(16)
        if marital:
            code = lookup("0002", marital)
            coding = {"system": V3_MARITAL, "code": code} if code else dt.table_coding(marital, "0002")
            patient["maritalStatus"] = {"coding": [coding]}
        multiple = seg.get(24)
        if multiple in ("Y", "N"):
            order = self.num(seg, 25)
            patient["multipleBirthInteger" if order else "multipleBirthBoolean"] = order or multiple == "Y"
        death_time = self.ts(seg, 29)
        if death_time:
            patient["deceasedDateTime"] = death_time
        elif seg.get(30) in ("Y", "N"):
            patient["deceasedBoolean"] = seg.get(30) == "Y"
        ext = list(patient.get("extension") or [])
        for rep in seg.repetitions(10):
            race = dt.codeable(rep)
            if race:
                ext.append({"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
                            "extension": _omb_extension(race)})
        for rep in seg.repetitions(22):
            eth = dt.codeable(rep)
            if eth:
                ext.append({"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity",
                            "extension": _omb_extension(eth)})
        patient["extension"] = ext
        key = _patient_key(patient["identifier"], seg)
        ref = ctx.add(_drop_empty(patient), key, scoped=key.startswith("msg|"))
        ctx.patient = ref
        self.last = ref
        mothers = _identifiers(seg.repetitions(21))
        if mothers:
            mother_rp = {"resourceType": "RelatedPerson", "patient": {"reference": ref}, "identifier": mothers,
                         "relationship": [{"coding": [{"system": V3_ROLE_CODE, "code": "MTH",
                                                       "display": "mother"}]}]}
            ctx.add(mother_rp, f"mother|{ref}|{seg.field(21)}")
        account = seg.rep(18)
        if account.get(1):
            acc = {"resourceType": "Account", "status": "active", "identifier": [dt.identifier(account)],
                   "subject": [{"reference": ref}]}
            self.account = ctx.add(acc, f"{account.raw}", scoped=False)

    def seg_PD1(self, seg: Segment) -> None:
        patient = self.ctx.get(self.ctx.patient)
        if patient is None:
            return
        gps = [{"reference": r} for r in self.practitioners(seg, 4)]
        gps += [{"reference": r} for r in (self.ctx.organization_xon(x) for x in seg.repetitions(3)) if r]
        if gps:
            patient.setdefault("generalPractitioner", []).extend(gps)

    def seg_MRG(self, seg: Segment) -> None:
        ctx = self.ctx
        if ctx.trigger in _MERGE_ACCOUNT_EVENTS and seg.get(3):
            acc = {"resourceType": "Account", "status": "inactive",
                   "identifier": [dt.identifier(seg.rep(3))], "subject": [self.subject()] if ctx.patient else []}
            self.last = ctx.add(_drop_empty(acc), f"prior-account|{seg.field(3)}")
            return
        if ctx.trigger in _MERGE_VISIT_EVENTS and seg.get(5):
            enc = {"resourceType": "Encounter", "status": "entered-in-error",
                   "class": {"system": V3_ACT_CODE, "code": "IMP", "display": "inpatient encounter"},
                   "identifier": [dt.identifier(seg.rep(5))], "subject": self.subject()}
            self.last = ctx.add(_drop_empty(enc), f"prior-visit|{seg.field(5)}")
            return
        idents = _identifiers(seg.repetitions(1))
        idents += _identifiers(seg.repetitions(4))
        if not idents:
            return
        prior: dict[str, Any] = {"resourceType": "Patient", "active": False, "identifier": idents}
        names = _names(seg.repetitions(7))
        if names:
            prior["name"] = names
        if ctx.patient:
            prior["link"] = [{"other": {"reference": ctx.patient}, "type": "replaced-by"}]
        prior_ref = ctx.add(prior, _patient_key(idents, seg), scoped=False)
        survivor = ctx.get(ctx.patient)
        if survivor is not None:
            survivor.setdefault("link", []).append({"other": {"reference": prior_ref}, "type": "replaces"})
        self.last = prior_ref

    def seg_NK1(self, seg: Segment) -> None:
        ctx = self.ctx
        if not ctx.patient:
            return
        rp: dict[str, Any] = {"resourceType": "RelatedPerson", "patient": {"reference": ctx.patient}}
        rp["name"] = _names(seg.repetitions(2))
        rels = []
        for n in (3, 7):
            rep = seg.rep(n)
            code = rep.get(1)
            if not code:
                continue
            role = lookup("0063", code)
            coding = {"system": V3_ROLE_CODE, "code": role} if role else dt.table_coding(code, "0063" if n == 3
                                                                                           else "0131")
            if coding is None:
                continue
            if rep.get(2):
                coding["display"] = rep.get(2)
            rels.append({"coding": [coding]})
        rp["relationship"] = rels
        rp["address"] = _addresses(seg.repetitions(4))
        telecom = _telecoms(seg.repetitions(5), "home")
        telecom += _telecoms(seg.repetitions(6), "work")
        rp["telecom"] = telecom
        rp["period"] = dt.period(self.day(seg, 8), self.day(seg, 9))
        gender = lookup("0001-gender", seg.get(15))
        if gender:
            rp["gender"] = gender
        rp["birthDate"] = self.day(seg, 16)
        rp["identifier"] = _identifiers(seg.repetitions(33))
        language = dt.codeable(seg.rep(20))
        if language:
            rp["communication"] = [{"language": language}]
        self.last = ctx.add(_drop_empty(rp), f"NK1|{seg.index}")

    def seg_PV1(self, seg: Segment) -> None:
        ctx = self.ctx
        f = seg.fields()  # raw fields: empty ones are skipped without building anything
        nf = len(f)
        enc: dict[str, Any] = {"resourceType": "Encounter"}
        pclass = seg.get(2)
        mapped = lookup("0004-class", pclass)
        if mapped:
            enc["class"] = {"system": V3_ACT_CODE, **mapped}
        elif pclass:
            enc["class"] = dt.table_coding(pclass, "0004")
        else:
            enc["class"] = {"system": "http://terminology.hl7.org/CodeSystem/v3-NullFlavor", "code": "UNK"}
        start, end = self.ts(seg, 44), self.ts(seg, 45)
        status = lookup("0003-encounter-status", ctx.trigger) if ctx.mtype == "ADT" else None
        if status is None:
            status = "finished" if end else (lookup("0004-status", pclass) or "unknown")
        enc["status"] = status
        visit = dt.identifier(seg.rep(19))
        if visit:
            visit.setdefault("type", {"coding": [{"system": f"{V2}0203", "code": "VN", "display": "Visit number"}]})
        alt_visit = dt.identifier(seg.rep(50)) if nf > 50 and f[50] else None
        enc["identifier"] = [i for i in (visit, alt_visit) if i]
        admit_type = seg.get(4)
        if admit_type:
            enc["type"] = [{"coding": [dt.table_coding(admit_type, "0007")]}]
        service = seg.get(10)
        if service:
            enc["serviceType"] = {"coding": [dt.table_coding(service, "0069")]}
        enc["subject"] = self.subject()
        enc["period"] = dt.period(start, end)
        locations = []
        for n, loc_status, temporary in _PV1_LOCATIONS:
            if n >= nf or not f[n]:
                continue
            ref = ctx.location(seg.rep(n))
            if ref:
                entry: dict[str, Any] = {"location": {"reference": ref}, "status": loc_status}
                if temporary:
                    entry["extension"] = [{
                        "url": "http://hl7.org/fhir/uv/v2mappings/StructureDefinition/TemporaryLocation",
                        "valueBoolean": True}]
                locations.append(entry)
        enc["location"] = locations
        participants = []
        for n, code, display in _PV1_PARTICIPANTS:
            if n >= nf or not f[n]:
                continue
            for ref in self.practitioners(seg, n):
                participants.append({
                    "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                          "code": code, "display": display}]}],
                    "individual": {"reference": ref},
                })
        enc["participant"] = participants
        hosp: dict[str, Any] = {}
        pre = dt.identifier(seg.rep(5)) if nf > 5 and f[5] else None
        if pre:
            hosp["preAdmissionIdentifier"] = pre
        for n, key, table_id in _PV1_HOSPITALIZATION:
            code = seg.get(n)
            if code:
                hosp[key] = {"coding": [dt.table_coding(code, table_id)]}
        diet = self.ccs(seg, 38) if nf > 38 and f[38] else None
        if diet:
            hosp["dietPreference"] = diet
        if hosp:
            enc["hospitalization"] = hosp
        facility = seg.rep(39)
        if facility.raw:
            org = ctx.organization(facility.get(1))
            if org:
                enc["serviceProvider"] = {"reference": org}
        key = f"{visit.get('system', '')}|{visit['value']}" if visit else ""
        ref = ctx.add(_drop_empty(enc), f"visit|{ctx.patient}|{key}" if key else f"PV1|{seg.index}",
                      scoped=not key)
        ctx.encounter = ref
        self.last = ref

    def seg_PV2(self, seg: Segment) -> None:
        enc = self.ctx.get(self.ctx.encounter)
        if enc is None:
            return
        reason = self.cc(seg, 3)
        if reason:
            enc.setdefault("reasonCode", []).append(reason)
        # Expected admit/discharge only stand in when the actual times are absent (IG PV2-8/9).
        start, end = self.ts(seg, 8), self.ts(seg, 9)
        if start or end:
            period = enc.setdefault("period", {})
            if start and "start" not in period:
                period["start"] = start
            if end and "end" not in period:
                period["end"] = end
        length = self.num(seg, 11)
        if length is not None:
            enc["length"] = {"value": length, "unit": "d", "system": "http://unitsofmeasure.org", "code": "d"}
        priority = self.cc(seg, 25)
        if priority:
            enc["priority"] = priority

    def seg_EVN(self, seg: Segment) -> None:
        ctx = self.ctx
        prov: dict[str, Any] = {"resourceType": "Provenance"}
        # Provenance.recorded is a mandatory instant: pad a less precise EVN-2/MSH-7.
        recorded = self._padded_instant(seg, 2)
        if recorded is None:
            recorded = self._padded_instant(ctx.msg.msh, 7)
        if recorded is None:
            return
        prov["recorded"] = recorded
        prov["occurredDateTime"] = self.ts(seg, 6)
        event = seg.get(1) or ctx.trigger
        if event:
            prov["activity"] = {"coding": [dt.table_coding(event, "0003")]}
        reason = self.cc(seg, 4)
        if reason:
            prov["reason"] = [reason]
        agents = [{"who": {"reference": r}, "type": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "enterer"}]}}
            for r in self.practitioners(seg, 5)]
        facility = seg.rep(7)
        if facility.raw:
            org = ctx.organization_hd(facility)
            if org:
                agents.append({"who": {"reference": org}})
        if not agents:
            org = ctx.organization_hd(ctx.msg.msh.rep(4)) or ctx.device(ctx.msg.msh.get(3) or "unknown sender")
            agents.append({"who": {"reference": org}})
        prov["agent"] = agents
        self.provenance = ctx.add(_drop_empty(prov), f"EVN|{seg.index}")

    def seg_AL1(self, seg: Segment) -> None:
        ctx = self.ctx
        if not ctx.patient:
            return
        ai: dict[str, Any] = {
            "resourceType": "AllergyIntolerance",
            "patient": {"reference": ctx.patient},
            "clinicalStatus": {"coding": [{"system": _ALLERGY_CLINICAL, "code": "active"}]},
        }
        ai["code"] = self.cc(seg, 3)
        kind = lookup("0127", seg.get(2)) or {}
        if "category" in kind:
            ai["category"] = [kind["category"]]
        if "type" in kind:
            ai["type"] = kind["type"]
        crit = lookup("0128", seg.get(4))
        if crit:
            ai["criticality"] = crit
        reactions = [{"manifestation": [{"text": r.text}]} for r in seg.repetitions(5) if r.raw]
        ai["reaction"] = reactions
        onset = seg.get(6)
        if onset:
            ai["onsetDateTime"] = self.ts(seg, 6)
        self.last = ctx.add(_drop_empty(ai), f"AL1|{seg.index}")

    def seg_DG1(self, seg: Segment) -> None:
        ctx = self.ctx
        if not ctx.patient:
            return
        code = self.cc(seg, 3) or ({"text": seg.get(4)} if seg.get(4) else None)
        if code and seg.get(4) and "text" not in code:
            code["text"] = seg.get(4)
        cond: dict[str, Any] = {
            "resourceType": "Condition",
            "subject": {"reference": ctx.patient},
            "category": [{"coding": [{"system": _CONDITION_CATEGORY, "code": "encounter-diagnosis",
                                      "display": "Encounter Diagnosis"}]}],
            "code": code,
            "onsetDateTime": self.ts(seg, 5),
            "encounter": self.enc_ref(),
            "recordedDate": self.ts(seg, 19),
            "identifier": [i for i in (dt.ei_identifier(seg.rep(20)),) if i],
        }
        cond["asserter"] = {"reference": self.practitioners(seg, 16)[0]} if self.practitioners(seg, 16) else None
        ref = ctx.add(_drop_empty(cond), f"DG1|{seg.index}")
        enc = ctx.get(ctx.encounter)
        if enc is not None:
            diag: dict[str, Any] = {"condition": {"reference": ref}}
            use = lookup("0052", seg.get(6))
            if use:
                diag["use"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/diagnosis-role",
                                           "code": use}]}
            rank = self.num(seg, 15)
            if isinstance(rank, int) and rank > 0:
                diag["rank"] = rank
            enc.setdefault("diagnosis", []).append(diag)
        self.last = ref

    def seg_PR1(self, seg: Segment) -> None:
        ctx = self.ctx
        if not ctx.patient:
            return
        code = self.cc(seg, 3) or ({"text": seg.get(4)} if seg.get(4) else None)
        proc: dict[str, Any] = {
            "resourceType": "Procedure",
            "status": "completed",
            "subject": {"reference": ctx.patient},
            "code": code,
            "performedDateTime": self.ts(seg, 5),
            "encounter": self.enc_ref(),
            "category": self.cc(seg, 6) if seg.get(6) else None,
            "identifier": [i for i in (dt.ei_identifier(seg.rep(19)),) if i],
        }
        performers = []
        for n, role in ((8, "anesthesiologist"), (11, "surgeon"), (12, "practitioner")):
            for ref in self.practitioners(seg, n):
                performers.append({"actor": {"reference": ref}, "function": {"text": role}})
        proc["performer"] = performers
        self.last = ctx.add(_drop_empty(proc), f"PR1|{seg.index}")

    def seg_IN1(self, seg: Segment) -> None:
        ctx = self.ctx
        if not ctx.patient:
            return
        payor_name = seg.rep(4).get(1)
        payor_id = seg.rep(3)
        payor = ctx.organization(payor_name, payor_id.get(1), dt.hd_system(payor_id.part(4)))
        if payor is None:
            payor = ctx.organization(seg.get(2, comp=2) or seg.get(2) or "unknown payor")
        cov: dict[str, Any] = {
            "resourceType": "Coverage",
            "status": "active",
            "beneficiary": {"reference": ctx.patient},
            "payor": [{"reference": payor}],
            "period": dt.period(self.day(seg, 12), self.day(seg, 13)),
            "subscriberId": seg.get(36) or None,
            "order": self.num(seg, 22) if seg.get(22).isdigit() else None,
        }
        plan_type = seg.get(15)
        if plan_type:
            cov["type"] = {"coding": [dt.table_coding(plan_type, "0086")]}
        group = seg.get(8)
        if group:
            cov["class"] = [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/coverage-class",
                                                  "code": "group"}]},
                             "value": group, "name": seg.get(9) or None}]
            cov["class"] = [_drop_empty(c) for c in cov["class"]]
        rel = seg.get(17)
        if rel:
            fhir_rel = {"SEL": "self", "SPO": "spouse", "CHD": "child", "EME": "other"}.get(rel.upper(), "other")
            cov["relationship"] = {"coding": [{"system": _SUBSCRIBER_RELATIONSHIP, "code": fhir_rel}]}
            if fhir_rel == "self":
                cov["subscriber"] = {"reference": ctx.patient}
        policy = seg.get(46) or seg.get(49)
        if policy:
            cov["identifier"] = [{"value": policy}]
        self.last = ctx.add(_drop_empty(cov), f"IN1|{seg.index}")

    def seg_GT1(self, seg: Segment) -> None:
        ctx = self.ctx
        if not ctx.patient:
            return
        rel = seg.get(11).upper()
        if rel in ("SEL", "SLF", "SELF"):
            party = ctx.patient
        else:
            rp: dict[str, Any] = {
                "resourceType": "RelatedPerson",
                "patient": {"reference": ctx.patient},
                "name": _names(seg.repetitions(3)),
                "address": _addresses(seg.repetitions(5)),
                "telecom": _telecoms(seg.repetitions(6), "home"),
                "identifier": _identifiers(seg.repetitions(2)),
            }
            if rel:
                role = lookup("0063", rel)
                rp["relationship"] = [{"coding": [{"system": V3_ROLE_CODE, "code": role} if role
                                                  else dt.table_coding(rel, "0063")]}]
            party = ctx.add(_drop_empty(rp), f"GT1|{seg.index}")
        account = ctx.get(self.account)
        if account is None:
            acc = {"resourceType": "Account", "status": "active", "subject": [{"reference": ctx.patient}]}
            self.account = ctx.add(acc, "guarantor-account")
            account = ctx.get(self.account)
        assert account is not None
        account.setdefault("guarantor", []).append({"party": {"reference": party}})

    # -- orders and results --------------------------------------------------
    def seg_ORC(self, seg: Segment) -> None:
        self._close_order()
        self.orc = seg
        self.order = None
        self.report = None
        self.medreq = None
        self.med = None

    def _close_order(self) -> None:
        """An ORC that got no OBR/RX* detail still is an order: map it alone."""
        orc = self.orc
        if orc is not None and self.order is None and self.medreq is None and self.med is None:
            if self.ctx.mtype not in ("VXU", "RDS", "SIU", "MDM", "DFT", "BAR"):
                self.order = self._service_request(orc, None)
        self.orc = None

    def _order_status(self, orc: Segment | None) -> str:
        if orc is None:
            return "active"
        return lookup("0038", orc.get(5)) or lookup("0119", orc.get(1)) or "active"

    def _order_identifiers(self, orc: Segment | None, obr: Segment | None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for seg in (orc, obr):
            if seg is None:
                continue
            for n, code in _ORDER_ID_FIELDS:
                ident = dt.ei_identifier(seg.rep(n), code)
                if ident is None:
                    continue
                for o in out:  # a loop, not all() over a generator (a generator object per call)
                    if ident["value"] == o["value"] and ident["type"] == o["type"]:
                        break
                else:
                    out.append(ident)
        return out

    def _service_request(self, orc: Segment | None, obr: Segment | None) -> str:
        ctx = self.ctx
        sr: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "status": self._order_status(orc),
            "intent": "order",
            "subject": self.subject(),
            "encounter": self.enc_ref(),
            "identifier": self._order_identifiers(orc, obr),
        }
        if orc is not None:
            sr["authoredOn"] = self.ts(orc, 9)
            requesters = self.practitioners(orc, 12)
            if requesters:
                sr["requester"] = {"reference": requesters[0]}
        if obr is not None:
            sr["code"] = self.cc(obr, 4)
            priority = lookup("0280", obr.get(5)) or (lookup("0280", orc.get(7, comp=6)) if orc else None)
            if priority:
                sr["priority"] = priority
            sr["occurrenceDateTime"] = self.ts(obr, 7)
            if "requester" not in sr:
                requesters = self.practitioners(obr, 16)
                if requesters:
                    sr["requester"] = {"reference": requesters[0]}
            sr["reasonCode"] = self.ccs(obr, 31)
            if self.specimen:
                sr["specimen"] = [{"reference": self.specimen}]
        if sr.get("subject") is None:
            # ServiceRequest.subject is mandatory; an order without PID names no one.
            sr["subject"] = {"display": "unknown"}
        key = obr.index if obr is not None else orc.index if orc is not None else 0
        ref = ctx.add(_drop_empty(sr), f"order|{key}")
        self.last = ref
        return ref

    def seg_OBR(self, seg: Segment) -> None:
        ctx = self.ctx
        self.order = self._service_request(self.orc, seg)
        self.report = None
        result_status = seg.get(25)
        if (ctx.mtype in _RESULT_MESSAGES and ctx.mtype != "MDM") or result_status:
            dr: dict[str, Any] = {
                "resourceType": "DiagnosticReport",
                "status": lookup("0123", result_status) or "unknown",
                "code": self.cc(seg, 4) or {"text": "unknown"},
                "subject": self.subject(),
                "encounter": self.enc_ref(),
                "basedOn": [{"reference": self.order}],
                "effectiveDateTime": self.ts(seg, 7),
                "issued": self.inst(seg, 22),
                "identifier": [i for i in (dt.ei_identifier(seg.rep(3), "FILL"),) if i],
            }
            category = seg.get(24)
            if category:
                dr["category"] = [{"coding": [dt.table_coding(category, "0074")]}]
            performers = self.practitioners(seg, 32)
            if performers:
                dr["resultsInterpreter"] = [{"reference": r} for r in performers]
            if self.specimen:
                dr["specimen"] = [{"reference": self.specimen}]
            self.report = ctx.add(_drop_empty(dr), f"report|{seg.index}")
            self.last = self.report

    def seg_SPM(self, seg: Segment) -> None:
        ctx = self.ctx
        spec: dict[str, Any] = {"resourceType": "Specimen", "subject": self.subject()}
        ids = seg.rep(2)
        spec["identifier"] = [i for i in (dt.ei_identifier(ids.part(1), "PLAC"),
                                          dt.ei_identifier(ids.part(2), "FILL")) if i]
        spec["type"] = self.cc(seg, 4)
        collection: dict[str, Any] = {
            "method": self.cc(seg, 7),
            "bodySite": self.cc(seg, 8),
        }
        start, end = self.ts(seg, 17, 0, 1), self.ts(seg, 17, 0, 2)
        if start and end:
            collection["collectedPeriod"] = {"start": start, "end": end}
        elif start:
            collection["collectedDateTime"] = start
        amount = self.num(seg, 12)
        if amount is not None:
            collection["quantity"] = dt.quantity(amount, seg.rep(12).part(2))
        spec["collection"] = _drop_empty(collection)
        spec["receivedTime"] = self.ts(seg, 18)
        if self.order:
            spec["request"] = [{"reference": self.order}]
        self.specimen = ctx.add(_drop_empty(spec), f"SPM|{seg.index}")
        self.last = self.specimen
        for ref in (self.report, self.order):
            res = ctx.get(ref)
            if res is not None:
                res.setdefault("specimen", []).append({"reference": self.specimen})

    def seg_OBX(self, seg: Segment) -> None:
        ctx = self.ctx
        if ctx.mtype == "MDM" and self.doc is not None:
            self._document_content(seg)
            return
        obs: dict[str, Any] = {"resourceType": "Observation"}
        # Absent values are skipped here rather than inserted and dropped (_drop_empty still runs
        # for what _obx_value adds).
        obs["status"] = lookup("0085", seg.get(11)) or "unknown"
        obs["code"] = self.cc(seg, 3) or {"text": seg.get(4) or "unknown"}
        if ctx.patient:
            obs["subject"] = {"reference": ctx.patient}
        if ctx.encounter:
            obs["encounter"] = {"reference": ctx.encounter}
        effective = self.ts(seg, 14)
        if effective is None and self.order:
            effective = (ctx.get(self.order) or {}).get("occurrenceDateTime")
        if effective:
            obs["effectiveDateTime"] = effective
        issued = self.inst(seg, 19)
        if issued:
            obs["issued"] = issued
        self._obx_value(seg, obs)
        ref_range = seg.get(7)
        if ref_range:
            obs["referenceRange"] = [{"text": seg.field(7) and seg.rep(7).text}]
        interpretation = _collect(dt.interpretation, seg.repetitions(8))
        if interpretation:
            obs["interpretation"] = interpretation
        method = self.cc(seg, 17)
        if method:
            obs["method"] = method
        body_site = self.cc(seg, 20)
        if body_site:
            obs["bodySite"] = body_site
        performers = self.practitioners(seg, 16)
        org = seg.rep(23)
        if org.raw:
            org_ref = ctx.organization_xon(org)
            if org_ref:
                performers.append(org_ref)
        if performers:
            obs["performer"] = [{"reference": r} for r in performers]
        if seg.field(21):
            ident = dt.ei_identifier(seg.rep(21))
            if ident:
                obs["identifier"] = [ident]
        if self.specimen:
            obs["specimen"] = {"reference": self.specimen}
        if self.order:
            obs["basedOn"] = [{"reference": self.order}]
        med = ctx.get(self.med)
        if med is not None and med["resourceType"] == "Immunization":
            obs["partOf"] = [{"reference": self.med}]
        ref = ctx.add(_drop_empty(obs), f"OBX|{seg.index}")
        report = ctx.get(self.report)
        if report is not None:
            report.setdefault("result", []).append({"reference": ref})
        self.last = ref

    def _obx_value(self, seg: Segment, obs: dict[str, Any]) -> None:
        vtype = seg.get(2).upper()
        reps = seg.repetitions(5)
        if not reps:
            return
        units = seg.rep(6)
        values: list[tuple[str, Any]] = []
        for rep in reps:
            if not rep.raw:
                continue
            if vtype == "NM":
                try:
                    value = dt.number(rep.get(1))
                except dt.DataTypeError as exc:
                    raise Hl7ParseError(str(exc), segment_index=seg.index, segment_id="OBX", field=5) from None
                if value is not None:
                    values.append(("valueQuantity", dt.quantity(value, units)))
            elif vtype == "SN":
                values.append(self._structured_numeric(seg, rep, units))
            elif vtype in ("CE", "CWE", "CNE", "CF"):
                concept = dt.codeable(rep)
                if concept:
                    values.append(("valueCodeableConcept", concept))
            elif vtype in ("DT", "TS", "DTM"):
                values.append(("valueDateTime", self.ts_value(seg, 5, rep.get(1))))
            elif vtype == "TM":
                values.append(("valueTime", _fhir_time(rep.get(1))))
            elif vtype == "CQ":
                qty = self._wrap(seg, 5, dt.number, rep.get(1))
                if qty is not None:
                    values.append(("valueQuantity", dt.quantity(qty, rep.part(2))))
            elif vtype == "NR":
                low = self._wrap(seg, 5, dt.number, rep.get(1))
                high = self._wrap(seg, 5, dt.number, rep.get(2))
                values.append(("valueRange", _drop_empty({"low": {"value": low} if low is not None else None,
                                                          "high": {"value": high} if high is not None else None})))
            elif vtype in ("ID", "IS"):
                values.append(("valueCodeableConcept", {"coding": [{"code": rep.get(1)}]}))
            elif vtype == "ED":
                values.append(("valueString", rep.get(5) or rep.text))
            else:  # ST, TX, FT, and anything unknown is kept as text rather than lost
                values.append(("valueString", rep.text))
        values = [(k, v) for k, v in values if v]
        if not values:
            return
        if len(values) == 1 or all(k == "valueString" for k, _ in values):
            if values[0][0] == "valueString" and len(values) > 1:
                obs["valueString"] = "\n".join(v for _, v in values)
            else:
                obs[values[0][0]] = values[0][1]
            return
        # Repeating OBX-5 values: one component each, same code (IG OBX-5 repetition guidance).
        obs["component"] = [{"code": obs["code"], key: value} for key, value in values]

    def _structured_numeric(self, seg: Segment, rep: Rep, units: Rep) -> tuple[str, Any]:
        comparator, n1, sep, n2 = rep.get(1), rep.get(2), rep.get(3), rep.get(4)
        first = self._wrap(seg, 5, dt.number, n1) if n1 else None
        second = self._wrap(seg, 5, dt.number, n2) if n2 else None
        if sep in ("-",) and first is not None and second is not None:
            return "valueRange", {"low": dt.quantity(first, units), "high": dt.quantity(second, units)}
        if sep in (":", "/") and first is not None and second is not None:
            return "valueRatio", {"numerator": {"value": first}, "denominator": {"value": second}}
        if first is None:
            return "valueString", rep.text
        qty = dt.quantity(first, units)
        if comparator in ("<", "<=", ">=", ">"):
            qty["comparator"] = comparator
        elif comparator and comparator != "=":
            return "valueString", rep.text
        return "valueQuantity", qty

    def seg_NTE(self, seg: Segment) -> None:
        text = "\n".join(r.text for r in seg.repetitions(3) if r.raw)
        if not text:
            return
        target = self.ctx.get(self.last)
        if target is not None and target["resourceType"] == "DiagnosticReport":
            target = self.ctx.get(self.order)  # R4 DiagnosticReport has no note; IG puts OBR notes on the order
        if target is None:
            return
        rtype = target["resourceType"]
        if rtype in _NOTE_TARGETS:
            target.setdefault("note", []).append({"text": text})
        elif rtype == "Appointment":
            target["comment"] = f"{target['comment']}\n{text}" if target.get("comment") else text

    # -- pharmacy and immunization -------------------------------------------
    def _med_request(self, seg: Segment, code_field: int) -> str:
        ctx = self.ctx
        existing = ctx.get(self.medreq)
        code = self.cc(seg, code_field)
        if existing is not None:
            if code:
                existing["medicationCodeableConcept"] = code
            return self.medreq or ""
        mr: dict[str, Any] = {
            "resourceType": "MedicationRequest",
            "status": self._order_status(self.orc),
            "intent": "order",
            "subject": self.subject() or {"display": "unknown"},
            "encounter": self.enc_ref(),
            "medicationCodeableConcept": code or {"text": "unknown"},
            "identifier": self._order_identifiers(self.orc, None),
        }
        if self.orc is not None:
            mr["authoredOn"] = self.ts(self.orc, 9)
            requesters = self.practitioners(self.orc, 12)
            if requesters:
                mr["requester"] = {"reference": requesters[0]}
        self.medreq = ctx.add(_drop_empty(mr), f"medreq|{seg.index}")
        self.med = self.medreq
        self.last = self.medreq
        return self.medreq

    def seg_RXO(self, seg: Segment) -> None:
        ref = self._med_request(seg, 1)
        mr = self.ctx.get(ref)
        assert mr is not None
        dose = self.num(seg, 2)
        if dose is not None:
            mr["dosageInstruction"] = [{"doseAndRate": [{"doseQuantity": dt.quantity(dose, seg.rep(4))}]}]

    def seg_RXE(self, seg: Segment) -> None:
        ref = self._med_request(seg, 2)
        mr = self.ctx.get(ref)
        assert mr is not None
        low, high = self.num(seg, 3), self.num(seg, 4)
        dosage: dict[str, Any] = {}
        if low is not None:
            if high is not None and high != low:
                dosage["doseAndRate"] = [{"doseRange": {"low": dt.quantity(low, seg.rep(5)),
                                                        "high": dt.quantity(high, seg.rep(5))}}]
            else:
                dosage["doseAndRate"] = [{"doseQuantity": dt.quantity(low, seg.rep(5))}]
        timing = seg.rep(1)
        if timing.get(2) or timing.get(8):
            dosage["text"] = " ".join(p for p in (timing.get(2), timing.get(8)) if p)
        if dosage:
            mr["dosageInstruction"] = [dosage]
        dispense: dict[str, Any] = {}
        qty = self.num(seg, 10)
        if qty is not None:
            dispense["quantity"] = dt.quantity(qty, seg.rep(11))
        refills = self.num(seg, 12)
        if isinstance(refills, int) and refills >= 0:
            dispense["numberOfRepeatsAllowed"] = refills
        if dispense:
            mr["dispenseRequest"] = dispense

    def seg_RXD(self, seg: Segment) -> None:
        ctx = self.ctx
        md: dict[str, Any] = {
            "resourceType": "MedicationDispense",
            "status": "completed",
            "subject": self.subject(),
            "context": self.enc_ref(),
            "medicationCodeableConcept": self.cc(seg, 2) or {"text": "unknown"},
            "whenHandedOver": self.ts(seg, 3),
            "identifier": [i for i in (dt.typed_identifier(seg.get(7), "FILL"),) if i],
        }
        qty = self.num(seg, 4)
        if qty is not None:
            md["quantity"] = dt.quantity(qty, seg.rep(5))
        if self.medreq:
            md["authorizingPrescription"] = [{"reference": self.medreq}]
        performers = self.practitioners(seg, 10)
        md["performer"] = [{"actor": {"reference": r}} for r in performers]
        self.med = ctx.add(_drop_empty(md), f"RXD|{seg.index}")
        self.last = self.med

    def seg_RXA(self, seg: Segment) -> None:
        ctx = self.ctx
        if ctx.mtype not in ("VXU", "ORU", "QBP", "RSP", "ADT"):
            # Pharmacy administration outside immunization messages: record as dispense-side
            # administration isn't in scope; keep it as an Immunization only for vaccines (CVX).
            if seg.get(5, comp=3).upper() != "CVX":
                return
        imm: dict[str, Any] = {"resourceType": "Immunization"}
        status = lookup("0322", seg.get(20)) or "completed"
        if seg.get(21).upper() == "D":
            status = "entered-in-error"
        imm["status"] = status
        imm["vaccineCode"] = self.cc(seg, 5) or {"text": "unknown"}
        imm["patient"] = self.subject() or {"display": "unknown"}
        imm["encounter"] = self.enc_ref()
        occurrence = self.ts(seg, 3)
        if occurrence:
            imm["occurrenceDateTime"] = occurrence
        else:
            imm["occurrenceString"] = "unknown"
        dose = self.num(seg, 6)
        if dose is not None and dose != 999:  # 999 means "unknown amount" in CDC guides
            imm["doseQuantity"] = dt.quantity(dose, seg.rep(7))
        info = seg.rep(9)
        if info.get(1) in ("00", "01"):
            imm["primarySource"] = info.get(1) == "00"
            if info.get(1) == "01":
                imm["reportOrigin"] = dt.codeable(info)
        lots = [r.get(1) for r in seg.repetitions(15) if r.get(1)]
        if lots:
            imm["lotNumber"] = lots[0]
        imm["expirationDate"] = self.day(seg, 16)
        for rep in seg.repetitions(17)[:1]:
            org = ctx.organization(rep.get(2) or rep.get(1), rep.get(1), coding_system(rep.get(3)))
            if org:
                imm["manufacturer"] = {"reference": org}
        if status == "not-done":
            reason = self.cc(seg, 18)
            if reason:
                imm["statusReason"] = reason
        performers = []
        for ref in self.practitioners(seg, 10):
            performers.append({"function": {"coding": [{"system": f"{V2}0443", "code": "AP",
                                                        "display": "Administering Provider"}]},
                               "actor": {"reference": ref}})
        if self.orc is not None:
            for ref in self.practitioners(self.orc, 12):
                performers.append({"function": {"coding": [{"system": f"{V2}0443", "code": "OP",
                                                            "display": "Ordering Provider"}]},
                                   "actor": {"reference": ref}})
        imm["performer"] = performers
        imm["identifier"] = self._order_identifiers(self.orc, None)
        self.med = ctx.add(_drop_empty(imm), f"RXA|{seg.index}")
        self.last = self.med

    def seg_RXR(self, seg: Segment) -> None:
        target = self.ctx.get(self.med)
        if target is None:
            return
        route, site = self.cc(seg, 1), self.cc(seg, 2)
        if target["resourceType"] == "Immunization":
            if route:
                target["route"] = route
            if site:
                target["site"] = site
            return
        dosages = target.setdefault("dosageInstruction", [{}])
        if route:
            dosages[0]["route"] = route
        if site:
            dosages[0]["site"] = site

    # -- scheduling -----------------------------------------------------------
    def seg_SCH(self, seg: Segment) -> None:
        ctx = self.ctx
        appt: dict[str, Any] = {"resourceType": "Appointment"}
        appt["identifier"] = [i for i in (dt.ei_identifier(seg.rep(1), "PLAC"),
                                          dt.ei_identifier(seg.rep(2), "FILL")) if i]
        appt["status"] = lookup("0278", seg.get(25)) or _SIU_STATUS.get(ctx.trigger, "booked")
        if ctx.trigger in ("S15", "S16", "S17", "S26"):
            appt["status"] = _SIU_STATUS[ctx.trigger]  # the event says what happened, whatever SCH-25 says
        reason = self.cc(seg, 6) or self.cc(seg, 7)
        if reason:
            appt["reasonCode"] = [reason]
        appt["appointmentType"] = self.cc(seg, 8)
        timing = seg.rep(11)
        appt["start"] = self.ts_instant(seg, 11, timing.get(4))
        appt["end"] = self.ts_instant(seg, 11, timing.get(5))
        duration = self.num(seg, 9)
        units = seg.get(10).lower()
        if isinstance(duration, int | float) and duration > 0:
            minutes = duration * 60 if units.startswith(("h", "hr")) else duration if units.startswith("min") \
                else None
            if minutes and float(minutes).is_integer():
                appt["minutesDuration"] = int(minutes)
        appt["participant"] = []
        if ctx.patient:
            appt["participant"].append({"actor": {"reference": ctx.patient}, "status": "accepted"})
        for n in (12, 16, 20):
            for ref in self.practitioners(seg, n):
                appt["participant"].append({"actor": {"reference": ref}, "status": "accepted"})
        self.appointment = ctx.add(appt, f"SCH|{seg.index}")
        self.last = self.appointment

    def ts_instant(self, seg: Segment, n: int, value: str) -> str | None:
        if not value:
            return None
        try:
            return dt.instant(value, self.ctx.default_tz)
        except dt.DataTypeError as exc:
            raise Hl7ParseError(str(exc), segment_index=seg.index, segment_id=seg.id, field=n) from None

    def _resource_participant(self, actor: str | None, seg: Segment, role_field: int | None,
                              start_field: int) -> None:
        appt = self.ctx.get(self.appointment)
        if appt is None:
            return
        part: dict[str, Any] = {"status": "accepted"}
        if actor:
            part["actor"] = {"reference": actor}
        if role_field:
            role = self.cc(seg, role_field)
            if role:
                part["type"] = [role]
        if "actor" not in part and "type" not in part:
            return
        appt["participant"].append(part)
        start = self.ts_instant(seg, start_field, seg.get(start_field))
        if start and not appt.get("start"):
            appt["start"] = start

    def seg_AIS(self, seg: Segment) -> None:
        appt = self.ctx.get(self.appointment)
        if appt is None:
            return
        service = self.cc(seg, 3)
        if service:
            appt.setdefault("serviceType", []).append(service)
        start = self.ts_instant(seg, 4, seg.get(4))
        if start and not appt.get("start"):
            appt["start"] = start

    def seg_AIG(self, seg: Segment) -> None:
        self._resource_participant(None, seg, 4 if seg.get(4) else 3, 8)

    def seg_AIL(self, seg: Segment) -> None:
        self._resource_participant(self.ctx.location(seg.rep(3)), seg, None, 6)

    def seg_AIP(self, seg: Segment) -> None:
        refs = self.practitioners(seg, 3)
        self._resource_participant(refs[0] if refs else None, seg, 4, 6)

    # -- documents, problems, referrals, financial ---------------------------
    def seg_TXA(self, seg: Segment) -> None:
        ctx = self.ctx
        doc: dict[str, Any] = {"resourceType": "DocumentReference"}
        doc["status"] = lookup("0275", seg.get(19)) or "current"
        doc_status = lookup("0271", seg.get(17))
        if doc_status:
            doc["docStatus"] = doc_status
        doc_type = seg.get(2)
        if doc_type:
            doc["type"] = {"coding": [dt.table_coding(doc_type, "0270")]}
        doc["subject"] = self.subject()
        doc["date"] = self.inst(seg, 4) or self.inst(seg, 6)
        authors = self.practitioners(seg, 5) + self.practitioners(seg, 9)
        doc["author"] = [{"reference": r} for r in dict.fromkeys(authors)]
        authenticators = self.practitioners(seg, 10)
        if authenticators:
            doc["authenticator"] = {"reference": authenticators[0]}
        master = dt.ei_identifier(seg.rep(12))
        if master:
            doc["masterIdentifier"] = master
        doc["identifier"] = [i for i in (dt.ei_identifier(seg.rep(14), "PLAC"),
                                         dt.ei_identifier(seg.rep(15), "FILL")) if i]
        parent = seg.get(13)
        if parent:
            doc["relatesTo"] = [{"code": "appends", "target": {"identifier": dt.ei_identifier(seg.rep(13))}}]
        context: dict[str, Any] = {}
        if ctx.encounter:
            context["encounter"] = [{"reference": ctx.encounter}]
        activity = self.ts(seg, 4)
        if activity:
            context["period"] = {"start": activity}
        if context:
            doc["context"] = context
        doc["content"] = [{"attachment": {"contentType": (seg.get(3) and _mime(seg.get(3))) or "text/plain"}}]
        self.doc = ctx.add(_drop_empty(doc), f"TXA|{seg.index}")
        self.last = self.doc

    def _document_content(self, seg: Segment) -> None:
        """MDM OBX segments are the document body: concatenate them into the attachment."""
        doc = self.ctx.get(self.doc)
        if doc is None:
            return
        text = "\n".join(r.text if seg.get(2).upper() not in ("ED",) else (r.get(5) or r.text)
                         for r in seg.repetitions(5) if r.raw)
        if not text:
            return
        attachment = doc["content"][0]["attachment"]
        previous = base64.b64decode(attachment["data"]).decode("utf-8") + "\n" if "data" in attachment else ""
        attachment["data"] = base64.b64encode((previous + text).encode("utf-8")).decode("ascii")
        attachment.setdefault("contentType", "text/plain")

    def seg_PRB(self, seg: Segment) -> None:
        ctx = self.ctx
        if not ctx.patient:
            return
        action = seg.get(1).upper()
        cond: dict[str, Any] = {
            "resourceType": "Condition",
            "subject": {"reference": ctx.patient},
            "category": [{"coding": [{"system": _CONDITION_CATEGORY, "code": "problem-list-item",
                                      "display": "Problem List Item"}]}],
            "code": self.cc(seg, 3),
            "identifier": [i for i in (dt.ei_identifier(seg.rep(4)),) if i],
            "recordedDate": self.ts(seg, 2),
            "onsetDateTime": self.ts(seg, 16),
            "abatementDateTime": self.ts(seg, 9),
        }
        if action == "DE":
            cond["verificationStatus"] = {"coding": [{"system": _CONDITION_VERIFICATION,
                                                      "code": "entered-in-error"}]}
        else:
            life_cycle = seg.get(14).upper()
            clinical = {"A": "active", "I": "inactive", "R": "resolved", "AC": "active",
                        "RE": "resolved", "IN": "inactive"}.get(life_cycle)
            if cond["abatementDateTime"] and clinical in (None, "active"):
                clinical = "resolved"
            cond["clinicalStatus"] = {"coding": [{"system": _CONDITION_CLINICAL, "code": clinical or "active"}]}
        key = seg.field(4) or str(seg.index)
        self.last = ctx.add(_drop_empty(cond), f"PRB|{key}")

    def seg_RF1(self, seg: Segment) -> None:
        ctx = self.ctx
        sr: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "status": lookup("0283", seg.get(1)) or "active",
            "intent": "order",
            "subject": self.subject() or {"display": "unknown"},
            "encounter": self.enc_ref(),
            "priority": lookup("0280", seg.get(2)),
            "category": [c for c in (self.cc(seg, 3),) if c],
            "reasonCode": self.ccs(seg, 10),
            "authoredOn": self.ts(seg, 7),
            "identifier": [i for i in (dt.ei_identifier(seg.rep(6)), dt.ei_identifier(seg.rep(11))) if i],
        }
        referral_type = seg.get(5)
        if referral_type:
            sr["code"] = {"coding": [dt.table_coding(referral_type, "0336")]}
        self.order = ctx.add(_drop_empty(sr), f"RF1|{seg.index}")
        self.last = self.order

    def seg_FT1(self, seg: Segment) -> None:
        ctx = self.ctx
        if not ctx.patient:
            return
        code = self.cc(seg, 7) or {"text": seg.get(8) or "unknown"}
        charge: dict[str, Any] = {
            "resourceType": "ChargeItem",
            "status": "billable",
            "code": code,
            "subject": {"reference": ctx.patient},
            "context": self.enc_ref(),
            "occurrenceDateTime": self.ts(seg, 4),
            "enteredDate": self.ts(seg, 5),
            "identifier": [i for i in (dt.typed_identifier(seg.get(2), "FILL"),) if i],
        }
        qty = self.num(seg, 10)
        if qty is not None:
            charge["quantity"] = {"value": qty}
        if self.account:
            charge["account"] = [{"reference": self.account}]
        self.last = ctx.add(_drop_empty(charge), f"FT1|{seg.index}")

    def seg_PDA(self, seg: Segment) -> None:
        """Patient death and autopsy (IG PDA map): cause → Condition, certification → Procedure."""
        ctx = self.ctx
        if not ctx.patient:
            return
        for rep in seg.repetitions(1):
            cause = dt.codeable(rep)
            if cause:
                ctx.add({"resourceType": "Condition", "subject": {"reference": ctx.patient}, "code": cause},
                        f"PDA|{seg.index}|{rep.raw}")
        certified_at, certifiers = self.ts(seg, 4), self.practitioners(seg, 5)
        if certified_at or certifiers:
            proc = {"resourceType": "Procedure", "status": "completed", "subject": {"reference": ctx.patient},
                    "code": {"text": "Death certification"}, "performedDateTime": certified_at,
                    "performer": [{"actor": {"reference": r}, "function": {"text": "Death Certified By"}}
                                  for r in certifiers]}
            ctx.add(_drop_empty(proc), f"PDA|{seg.index}|certification")
        if seg.get(6).upper() == "Y":
            start, end = self.ts(seg, 7, 0, 1), self.ts(seg, 7, 0, 2)
            proc = {"resourceType": "Procedure", "status": "completed", "subject": {"reference": ctx.patient},
                    "code": {"text": "Autopsy"}, "performedPeriod": dt.period(start, end),
                    "performer": [{"actor": {"reference": r}, "function": {"text": "Autopsy Performed By"}}
                                  for r in self.practitioners(seg, 8)]}
            ctx.add(_drop_empty(proc), f"PDA|{seg.index}|autopsy")
        patient = ctx.get(ctx.patient)
        if patient is not None and "deceasedDateTime" not in patient and seg.get(3).upper() == "Y":
            patient.pop("deceasedBoolean", None)
            patient["deceasedBoolean"] = True

    def finish(self) -> None:
        self._close_order()


# Segment id → unbound mapper method, built once.
_HANDLERS: Final[dict[str, Callable[[Mapper, Segment], None]]] = {
    name[4:]: getattr(Mapper, name) for name in dir(Mapper) if name.startswith("seg_")
}


def _patient_key(identifiers: list[dict[str, Any]], seg: Segment) -> str:
    """Patients are keyed by their first identifier so the same patient keeps one id."""
    for ident in identifiers:
        if ident.get("value"):
            return f"{ident.get('system', '')}|{ident['value']}"
    return f"msg|{seg.id}|{seg.index}"


def _omb_extension(concept: dict[str, Any]) -> list[dict[str, Any]]:
    ext: list[dict[str, Any]] = []
    for coding in concept.get("coding", []):
        ext.append({"url": "ombCategory" if coding.get("system") == "urn:oid:2.16.840.1.113883.6.238"
                    else "detailed", "valueCoding": coding})
    ext.append({"url": "text", "valueString": concept.get("text") or
                (concept.get("coding") or [{}])[0].get("display") or (concept.get("coding") or [{}])[0].get("code")
                or "unknown"})
    return ext


def _fhir_time(value: str) -> str | None:
    digits = value.strip().split("+")[0].split("-")[0]
    if len(digits) < 2 or not digits[:2].isdigit():
        return None
    hh, mm, ss = digits[0:2], digits[2:4] or "00", digits[4:6] or "00"
    return f"{hh}:{mm}:{ss}"


def _mime(value: str) -> str:
    """TXA-3 is a display format code (table 0191), not a MIME type: map the common ones."""
    return {"TX": "text/plain", "FT": "text/plain", "AP": "application/octet-stream", "IM": "image/*",
            "TEXT": "text/plain", "HTML": "text/html", "PDF": "application/pdf"}.get(value.upper(), "text/plain")
