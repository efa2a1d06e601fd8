"""HL7 v2 message → FHIR R4 Bundle (plain dicts), following the HL7 v2-to-FHIR IG.

Bundle shape: ``type: message`` with the MessageHeader first (IG: a v2 message
maps to a FHIR message Bundle; MSH → MessageHeader).  Entries carry
``fullUrl: urn:uuid:<id>`` and references between them use those urns, so the
bundle is self-contained; a sink that wants a transaction can rewrite
``urn:uuid:<id>`` to ``<Type>/<id>`` with PUT, the ids being deterministic.
"""

from __future__ import annotations

from typing import Any, Final

from schemas.hl7v2.errors import Hl7ParseError
from schemas.hl7v2.parser import Message, Segment, parse_message
from streams.normalize.hl7v2 import datatypes as dt
from streams.normalize.hl7v2.context import SUPPORTING, Ctx
from streams.normalize.hl7v2.errors import UnsupportedMessageError
from streams.normalize.hl7v2.segments import Mapper

__all__ = ["SUPPORTED_MESSAGE_TYPES", "convert_message", "event_summary"]

# Message types whose segments we know how to map; anything else is refused with
# a typed error (ACK 200) instead of producing a half-empty bundle.
SUPPORTED_MESSAGE_TYPES: Final = frozenset(
    {"ADT", "ORU", "ORM", "OML", "OUL", "OMG", "OMP", "OMI", "ORL", "SIU", "MDM", "VXU", "BAR", "DFT", "RDE",
     "RDS", "RAS", "REF", "RRI", "PPR", "PPP", "PGL", "ORR", "RGV"}
)
_MESSAGE_TYPE_TAG: Final = "http://terminology.hl7.org/CodeSystem/v2-0076"
_PROCESSING_ID_TAG: Final = "http://terminology.hl7.org/CodeSystem/v2-0103"


def convert_message(
    data: bytes | str | Message, *, source: str = "unknown", default_tz: str = "Z"
) -> dict[str, Any]:
    """Convert one HL7 v2 message to a FHIR R4 message Bundle (dict).

    ``source`` scopes the deterministic resource ids (same bytes + source → same
    ids).  ``default_tz`` is the offset given to v2 times that carry none.
    Raises :class:`Hl7ParseError` (or its subclass :class:`UnsupportedMessageError`).
    """
    msg = data if isinstance(data, Message) else parse_message(data)
    mtype, trigger, _structure = msg.message_type
    if not mtype:
        raise Hl7ParseError("message type is missing", segment_index=1, segment_id="MSH", field=9,
                            hl7_error_code=101)
    if mtype not in SUPPORTED_MESSAGE_TYPES:
        raise UnsupportedMessageError(f"unsupported message type {mtype!r}", segment_index=1, segment_id="MSH",
                                      field=9, hl7_error_code=200)
    if not trigger:
        raise UnsupportedMessageError(f"message type {mtype!r} without a trigger event", segment_index=1,
                                      segment_id="MSH", field=9, hl7_error_code=201)
    ctx = Ctx(msg, source, default_tz)
    mapper = Mapper(ctx)
    handlers = mapper.handlers
    for seg in msg.segments():
        handler = handlers.get(seg.id)
        if handler is None:
            continue
        try:
            handler(mapper, seg)
        except Hl7ParseError:
            raise
        except dt.DataTypeError as bad_value:
            # Values read through composite mappers (XAD/XPN dates...) carry no field number.
            raise Hl7ParseError(str(bad_value), segment_index=seg.index, segment_id=seg.id) from None
        except Exception as exc:
            raise Hl7ParseError(f"cannot map segment ({type(exc).__name__}: {exc})", segment_index=seg.index,
                                segment_id=seg.id, hl7_error_code=207) from exc
    mapper.finish()
    header = _message_header(ctx, msg.msh, mapper)
    provenance = ctx.get(mapper.provenance)
    if provenance is not None:
        provenance["target"] = [{"reference": r} for r in mapper.focus] or [{"reference": header}]
    entries = [{"fullUrl": header, "resource": ctx.resources[header]}]
    entries += [{"fullUrl": ref, "resource": ctx.resources[ref]} for ref in ctx.order if ref != header]
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": ctx.scoped_id("Bundle"),  # no resource key lacks a "|"
        "type": "message",
        "entry": entries,
    }
    control = msg.control_id
    if control:
        ident: dict[str, Any] = {"value": control}
        system = dt.hd_system(msg.msh.rep(3))
        if system:
            ident["system"] = system
        bundle["identifier"] = ident
    try:  # no lambda: compiled, a closure would move convert_message's locals into an environment object
        sent = dt.instant(msg.msh.get(7), default_tz)
    except dt.DataTypeError as exc:
        raise Hl7ParseError(str(exc), segment_index=msg.msh.index, segment_id=msg.msh.id, field=7) from None
    if sent:
        bundle["timestamp"] = sent
    return bundle


def _endpoint(hd_system: str | None, name: str, kind: str) -> str:
    if hd_system and not hd_system.startswith(dt.LOCAL_SYSTEM_BASE):
        return hd_system
    return f"urn:clinstream:v2:{kind}:{dt.quote_part(name or 'unknown')}"


def _message_header(ctx: Ctx, msh: Segment, mapper: Mapper) -> str:
    mtype, trigger, structure = ctx.mtype, ctx.trigger, ctx.structure
    sender_app, receiver_app = msh.rep(3), msh.rep(5)
    source: dict[str, Any] = {"endpoint": _endpoint(dt.hd_system(sender_app), sender_app.get(1), "app")}
    if sender_app.get(1):
        source["name"] = sender_app.get(1)
    for sft in ctx.msg.segs:  # the first SFT, found without indexing every segment by id
        if sft.id != "SFT":
            continue
        if sft.get(3):
            source["software"] = sft.get(3)
        if sft.get(2):
            source["version"] = sft.get(2)
        break
    header: dict[str, Any] = {
        "resourceType": "MessageHeader",
        "eventCoding": {"system": "http://terminology.hl7.org/CodeSystem/v2-0003", "code": trigger,
                        "display": f"{mtype}^{trigger}^{structure}"},
        "source": source,
        "meta": {"tag": [{"system": _MESSAGE_TYPE_TAG, "code": mtype}]},
    }
    processing = msh.get(11)
    if processing:
        header["meta"]["tag"].append({"system": _PROCESSING_ID_TAG, "code": processing})
    if receiver_app.raw or msh.get(6):
        dest: dict[str, Any] = {"endpoint": _endpoint(dt.hd_system(receiver_app), receiver_app.get(1), "app")}
        if receiver_app.get(1):
            dest["name"] = receiver_app.get(1)
        receiver = ctx.organization_hd(msh.rep(6))
        if receiver:
            dest["receiver"] = {"reference": receiver}
        header["destination"] = [dest]
    sender = ctx.organization_hd(msh.rep(4))
    if sender:
        header["sender"] = {"reference": sender}
    resources = ctx.resources
    mapper.focus = [r for r in ctx.order if resources[r]["resourceType"] not in SUPPORTING]  # header: SUPPORTING
    focus = [{"reference": r} for r in mapper.focus]
    if focus:
        header["focus"] = focus
    return ctx.add(header, "MessageHeader")


def event_summary(bundle: dict[str, Any]) -> dict[str, Any]:
    """What the normalize stage needs for the envelope.

    ``event_type`` ("ADT^A01"), ``message_type``/``trigger``, ``control_id``,
    ``patient_identifiers`` ([{system, value, type}] of every Patient, survivors
    first), ``occurred_at`` (EVN-6, else EVN-2, else MSH-7; FHIR dateTime or None).
    """
    entries = bundle.get("entry") or []
    header: dict[str, Any] = next(
        (e["resource"] for e in entries if e["resource"]["resourceType"] == "MessageHeader"), {})
    trigger = (header.get("eventCoding") or {}).get("code", "")
    mtype = next((t["code"] for t in (header.get("meta") or {}).get("tag", [])
                  if t.get("system") == _MESSAGE_TYPE_TAG), "")
    identifiers: list[dict[str, Any]] = []
    patients = [e["resource"] for e in entries if e["resource"]["resourceType"] == "Patient"]
    patients.sort(key=lambda p: p.get("active") is False)  # merged-away (inactive) patients last
    for patient in patients:
        for ident in patient.get("identifier", []):
            type_code = ((ident.get("type") or {}).get("coding") or [{}])[0].get("code")
            identifiers.append({"system": ident.get("system"), "value": ident["value"], "type": type_code})
    occurred = None
    for e in entries:
        res = e["resource"]
        if res["resourceType"] == "Provenance":
            occurred = res.get("occurredDateTime") or res.get("recorded")
            break
    return {
        "event_type": f"{mtype}^{trigger}" if mtype else trigger,
        "message_type": mtype,
        "trigger": trigger,
        "control_id": (bundle.get("identifier") or {}).get("value", ""),
        "patient_identifiers": identifiers,
        "occurred_at": occurred or bundle.get("timestamp"),
    }
