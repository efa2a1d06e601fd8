"""Patient consent: FHIR R4 ``Consent`` resources -> a compact, JSON-serialisable ``ConsentState``.

Semantics (FHIR R4 Consent, simplified to what routing needs):

- Only ``status = active`` consents take part; a later version of the same consent
  (same identity: ``id``, else first identifier) replaces the earlier one, so an
  update to ``inactive``/``rejected``/``entered-in-error`` revokes it.
- ``scope`` limits which purposes a consent speaks to: ``research`` -> HRESCH,
  ``treatment`` -> TREAT/ETREAT/COC, ``patient-privacy`` -> every purpose; ``adr``
  (advance directives) never governs disclosure.
- The root ``provision`` is the base rule (``type`` permit/deny, default deny as
  in R4's opt-in reading) and applies when its own conditions hold; nested
  provisions are exceptions to their parent and override it where their
  conditions hold (deepest match wins; among siblings, deny wins).
- Conditions: ``period`` contains the evaluation time, ``actor`` names the
  destination (its organization reference/identifier or its name), ``purpose``
  contains the destination's PurposeOfUse (or a parent code: ETREAT -> TREAT),
  ``class`` contains the resource type. An absent condition matches anything.
- Several applicable consents combine deny-overrides. Class-specific denials
  remove only those resource types from the event; the event is denied for the
  destination when nothing remains. No applicable consent -> the destination's
  ``consent_default``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from streams.route.errors import ConsentError

Decision = Literal["permit", "deny"]
_SCOPE_PURPOSES: dict[str, frozenset[str] | None] = {
    "patient-privacy": None,  # None = all purposes
    "research": frozenset({"HRESCH"}),
    "treatment": frozenset({"TREAT", "ETREAT", "COC"}),
    "adr": frozenset(),
}
# v3 PurposeOfUse specialisations: a consent about the parent covers the child.
_PURPOSE_PARENTS = {"ETREAT": "TREAT", "COC": "TREAT", "CAREMGT": "HOPERAT"}


def _epoch(value: Any, where: str) -> float | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ConsentError(f"{where}: expected a FHIR dateTime string")
    text = value.replace("Z", "+00:00")
    if len(text) == 4:
        text += "-01-01"
    elif len(text) == 7:
        text += "-01"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConsentError(f"{where}: {value!r} is not a FHIR dateTime") from exc
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _end_epoch(value: Any, where: str) -> float | None:
    """A period end given as a date covers that whole day (FHIR: precision defines the interval)."""
    t = _epoch(value, where)
    if t is None or not isinstance(value, str) or "T" in value:
        return t
    if len(value) == 4:
        nxt = f"{int(value) + 1:04d}-01-01"
    elif len(value) == 7:
        y, m = int(value[:4]), int(value[5:7])
        nxt = f"{y + m // 12:04d}-{m % 12 + 1:02d}-01"
    else:
        return t + 86400 - 0.001
    upper = _epoch(nxt, where)
    return None if upper is None else upper - 0.001


@dataclass(frozen=True, slots=True)
class Provision:
    type: Decision
    start: float | None = None
    end: float | None = None
    actors: frozenset[str] = frozenset()
    purposes: frozenset[str] = frozenset()
    classes: frozenset[str] = frozenset()
    children: tuple[Provision, ...] = ()

    def matches(self, at: float, who: frozenset[str], purpose: str, rtype: str | None) -> bool:
        if self.start is not None and at < self.start:
            return False
        if self.end is not None and at > self.end:
            return False
        if self.actors and not (self.actors & who):
            return False
        if self.purposes and purpose not in self.purposes and _PURPOSE_PARENTS.get(purpose) not in self.purposes:
            return False
        return not (self.classes and rtype is not None and rtype not in self.classes)

    def decide(self, at: float, who: frozenset[str], purpose: str, rtype: str | None) -> Decision | None:
        if not self.matches(at, who, purpose, rtype):
            return None
        decision: Decision = self.type
        child_decisions = {c.decide(at, who, purpose, rtype) for c in self.children} - {None}
        if child_decisions:
            decision = "deny" if "deny" in child_decisions else "permit"
        return decision

    def mentions_class(self) -> bool:
        return bool(self.classes) or any(c.mentions_class() for c in self.children)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        for name in ("start", "end"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        for name in ("actors", "purposes", "classes"):
            if getattr(self, name):
                out[name] = sorted(getattr(self, name))
        if self.children:
            out["children"] = [c.to_dict() for c in self.children]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Provision:
        if d.get("type") not in ("permit", "deny"):
            raise ConsentError("serialised provision without type permit/deny")
        return cls(
            type=d["type"],
            start=d.get("start"),
            end=d.get("end"),
            actors=frozenset(d.get("actors", ())),
            purposes=frozenset(d.get("purposes", ())),
            classes=frozenset(d.get("classes", ())),
            children=tuple(cls.from_dict(c) for c in d.get("children", ())),
        )


@dataclass(frozen=True, slots=True)
class ConsentEntry:
    identity: str
    status: str
    scope: str
    updated: str
    root: Provision

    def to_dict(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "status": self.status,
            "scope": self.scope,
            "updated": self.updated,
            "root": self.root.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConsentEntry:
        try:
            return cls(d["identity"], d["status"], d["scope"], d["updated"], Provision.from_dict(d["root"]))
        except KeyError as exc:
            raise ConsentError(f"serialised consent entry lacks {exc.args[0]!r}") from exc


@dataclass(frozen=True, slots=True)
class ConsentDecision:
    permitted: bool
    reason: str
    denied_types: frozenset[str] = frozenset()


@dataclass(slots=True)
class ConsentState:
    """All consents of one patient, keyed by consent identity. Keep one per EUID."""

    patient: str | None = None
    entries: dict[str, ConsentEntry] = field(default_factory=dict)
    # decisions of period-free states do not depend on time: memoised per (purpose, recipient, types, default)
    _memo: dict[tuple[Any, ...], ConsentDecision] = field(default_factory=dict, compare=False, repr=False)
    _timeless: bool | None = field(default=None, compare=False, repr=False)

    def timeless(self) -> bool:
        if self._timeless is None:
            self._timeless = not any(_has_period(e.root) for e in self.entries.values())
        return self._timeless

    def with_consent(self, resource: dict[str, Any]) -> ConsentState:
        """A new state with ``resource`` merged in (a later version of the same consent replaces it)."""
        entry = parse_consent(resource)
        entries = dict(self.entries)
        old = entries.get(entry.identity)
        if old is None or entry.updated >= old.updated:
            entries[entry.identity] = entry
        return ConsentState(self.patient or consent_patient(resource), entries)

    def to_dict(self) -> dict[str, Any]:
        return {"patient": self.patient, "entries": [e.to_dict() for e in self.entries.values()]}

    def to_json(self) -> str:
        return orjson.dumps(self.to_dict()).decode()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConsentState:
        if not isinstance(d, dict) or not isinstance(d.get("entries"), list):
            raise ConsentError("serialised ConsentState must be an object with an 'entries' list")
        entries = [ConsentEntry.from_dict(e) for e in d["entries"]]
        return cls(d.get("patient"), {e.identity: e for e in entries})

    @classmethod
    def from_json(cls, data: str | bytes | dict[str, Any]) -> ConsentState:
        if isinstance(data, dict):
            return cls.from_dict(data)
        try:
            return cls.from_dict(orjson.loads(data))
        except orjson.JSONDecodeError as exc:
            raise ConsentError(f"ConsentState is not JSON: {exc}") from exc

    @classmethod
    def from_consents(cls, resources: Iterable[dict[str, Any]]) -> ConsentState:
        state = cls()
        for r in resources:
            state = state.with_consent(r)
        return state


def _has_period(p: Provision) -> bool:
    return p.start is not None or p.end is not None or any(_has_period(c) for c in p.children)


def consent_patient(resource: dict[str, Any]) -> str | None:
    """The ``Consent.patient`` reference (or identifier value); the caller maps it to an EUID."""
    ref = resource.get("patient") or {}
    return ref.get("reference") or (ref.get("identifier") or {}).get("value")


def _codes(items: Any, where: str) -> frozenset[str]:
    out: set[str] = set()
    for item in items or ():
        if not isinstance(item, dict):
            raise ConsentError(f"{where}: expected Coding objects")
        if item.get("code"):
            out.add(str(item["code"]))
    return frozenset(out)


def _actors(items: Any, where: str) -> frozenset[str]:
    out: set[str] = set()
    for actor in items or ():
        ref = actor.get("reference") if isinstance(actor, dict) else None
        if not isinstance(ref, dict):
            raise ConsentError(f"{where}: each actor needs a reference")
        if ref.get("reference"):
            out.add(ref["reference"])
        ident = ref.get("identifier") or {}
        if ident.get("value"):
            out.add(ident["value"])
        if not ref.get("reference") and not ident.get("value") and ref.get("display"):
            out.add(ref["display"])
    return frozenset(out)


def _provision(p: dict[str, Any], where: str, default: Decision) -> Provision:
    if not isinstance(p, dict):
        raise ConsentError(f"{where}: provision must be an object")
    ptype = p.get("type", default)
    if ptype not in ("permit", "deny"):
        raise ConsentError(f"{where}.type: {ptype!r} is not permit/deny")
    period = p.get("period") or {}
    # nested provisions are exceptions: without their own type they invert the parent's
    child_default: Decision = "deny" if ptype == "permit" else "permit"
    return Provision(
        type=ptype,
        start=_epoch(period.get("start"), f"{where}.period.start"),
        end=_end_epoch(period.get("end"), f"{where}.period.end"),
        actors=_actors(p.get("actor"), f"{where}.actor"),
        purposes=_codes(p.get("purpose"), f"{where}.purpose"),
        classes=_codes(p.get("class"), f"{where}.class"),
        children=tuple(
            _provision(c, f"{where}.provision[{i}]", child_default) for i, c in enumerate(p.get("provision") or ())
        ),
    )


def parse_consent(resource: dict[str, Any]) -> ConsentEntry:
    if not isinstance(resource, dict) or resource.get("resourceType") != "Consent":
        raise ConsentError("not a FHIR Consent resource")
    status = resource.get("status")
    if not isinstance(status, str):
        raise ConsentError("Consent.status is required")
    scope_codes = _codes((resource.get("scope") or {}).get("coding"), "Consent.scope")
    scope = next(
        (s for s in ("patient-privacy", "research", "treatment", "adr") if s in scope_codes), "patient-privacy"
    )
    identity = resource.get("id")
    if not identity:
        idents = resource.get("identifier") or []
        first = idents[0] if idents else {}
        identity = f"{first.get('system', '')}|{first.get('value', '')}" if first.get("value") else None
    if not identity:
        identity = "sha256:" + hashlib.sha256(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)).hexdigest()
    updated = str((resource.get("meta") or {}).get("lastUpdated") or resource.get("dateTime") or "")
    # R4 Consent without a provision gives no permission: a bare root reads as deny (opt-in)
    root = _provision(resource.get("provision") or {"type": "deny"}, "Consent.provision", "deny")
    return ConsentEntry(str(identity), status, scope, updated, root)


def recipient_ids(destination: str, organization: str | None = None) -> frozenset[str]:
    """The names a Consent ``provision.actor`` may use for a destination."""
    return frozenset(
        x for x in (destination, f"Organization/{destination}", f"Device/{destination}", organization) if x
    )


def evaluate(
    state: ConsentState | None,
    *,
    purpose: str,
    destination: str,
    organization: str | None = None,
    resource_types: Iterable[str] = (),
    at: datetime | float | None = None,
    default: Decision = "permit",
    recipient: frozenset[str] | None = None,
) -> ConsentDecision:
    """May this destination receive these resource types for this purpose, at ``at`` (default now)?"""
    who = recipient if recipient is not None else recipient_ids(destination, organization)
    types = tuple(dict.fromkeys(resource_types))
    memo_key = None
    if state is not None and at is None and state.timeless():
        memo_key = (purpose, who, types, default)
        hit = state._memo.get(memo_key)
        if hit is not None:
            return hit
    if at is None:
        t = time.time()
    elif isinstance(at, datetime):
        t = (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
    else:
        t = float(at)
    decision = _decide(state, purpose, who, types, t, default)
    if memo_key is not None and state is not None and len(state._memo) < 256:
        state._memo[memo_key] = decision
    return decision


def _decide(
    state: ConsentState | None, purpose: str, who: frozenset[str], types: tuple[str, ...], t: float, default: Decision
) -> ConsentDecision:
    applicable = []
    if state is not None:
        for e in state.entries.values():
            if e.status != "active":
                continue
            purposes = _SCOPE_PURPOSES.get(e.scope)
            if purposes is not None and purpose not in purposes:
                continue
            applicable.append(e.root)
    if not applicable:
        if default == "permit":
            return ConsentDecision(True, "no-consent-default-permit")
        return ConsentDecision(False, "no-consent-default-deny", frozenset(types))
    per_type = any(p.mentions_class() for p in applicable)
    keys: list[str | None] = list(types) if per_type and types else [None]
    denied: set[str] = set()
    deny_all = False
    any_decision = False
    for rtype in keys:
        decisions = {p.decide(t, who, purpose, rtype) for p in applicable} - {None}
        if decisions:
            any_decision = True
            deny = "deny" in decisions
        else:
            # the consents on file do not speak to this case: the destination default applies
            deny = default == "deny"
        if deny:
            if rtype is None:
                deny_all = True
            else:
                denied.add(rtype)
    if deny_all or (types and denied >= set(types)):
        reason = "consent-denied" if any_decision else "no-consent-default-deny"
        return ConsentDecision(False, reason, frozenset(types) | frozenset(denied))
    return ConsentDecision(True, "consent-permit" if any_decision else "no-consent-default-permit", frozenset(denied))


def update_from_event(state: ConsentState | None, event: dict[str, Any]) -> ConsentState | None:
    """Merge the Consent resources an event carries into the patient's state.

    Returns the new state, or None when the event carries no Consent (nothing to store).
    Malformed Consents raise ``ConsentError`` so the caller can DLQ the event rather than
    silently keep an outdated permission.
    """
    consents = [r for r in event.get("resources") or () if type(r) is dict and r.get("resourceType") == "Consent"]
    if not consents:
        return None
    new = state if state is not None else ConsentState(patient=(event.get("patient") or {}).get("euid"))
    for c in consents:
        new = new.with_consent(c)
    return new
