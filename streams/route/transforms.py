"""Destination transforms and the HIPAA Safe Harbor profile, compiled once per destination.

Transforms (``TransformSpec.kind``; ``paths`` limits one to element subtrees, empty = everywhere):

- ``pseudonym``: identifier values -> keyed HMAC-SHA256 pseudonyms (``ps-<hex>``), deterministic per
  destination key so records still link; with no ``paths`` also resource ids, references and the EUID.
- ``date-shift``: every date/dateTime moves by a per-patient offset in ±max_shift_days (never 0), derived
  from HMAC(key, EUID), so intervals within one patient's record are preserved.
- ``date-year``: dates -> year. ``zip3``: US ZIP -> first 3 digits, low-population ZIP3 -> ``000``,
  anything else removed. ``age-cap``: a birthDate showing age > 89 at the event becomes the year that
  makes the patient 90 (the Safe Harbor "90 or older" category). ``drop-text``: narrative ``text``,
  ``note`` (NTE), ``comment``, ``patientInstruction`` and Observation ``valueString``/``valueMarkdown``
  (the OBX value type TX/FT is not kept in FHIR, so all Observation strings are treated as free text).

``safe-harbor`` (45 CFR 164.514(b)(2)) runs a strict walk over what the allow-list let through:
names, telecom, photos, contacts (relatives), free text, URLs, attachments, and every identifier
element are removed; addresses keep only state, country and ZIP3; every date keeps only its year;
ages over 89 collapse to 90; extensions pass only if their URL is in ``allow_extensions`` and their
values are coded/boolean; a string survives only under a key known to carry codes (status, code,
system, unit, ...). Resource ids, references and the EUID become keyed pseudonyms when the
destination has a ``pseudonym`` transform (its secret key makes them a re-identification code per
164.514(c) that cannot be translated back), otherwise they are removed. Date shifting is not a Safe
Harbor method (shifted dates are still dates), so ``date-shift`` with ``safe-harbor`` fails compile.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from importlib import resources as pkg_resources
from typing import Any

from streams.route.allow import Node, project
from streams.route.errors import RoutePolicyError
from topology.model import DestinationSpec, TransformSpec

_DROP = object()
_DATE_RE = re.compile(r"^(\d{4})(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$")
_US_ZIP = re.compile(r"^(\d{3})\d{2}(-?\d{4})?$")
_CACHE_LIMIT = 200_000

_TEXT_KEYS = frozenset({"text", "note", "comment", "patientInstruction"})
_OBS_TEXT_KEYS = frozenset({"valueString", "valueMarkdown"})
_IDENT_KEYS = frozenset({"identifier", "valueIdentifier"})
_EXT_KEYS = frozenset({"extension", "modifierExtension"})
_DATEISH = frozenset(
    {
        "date",
        "start",
        "end",
        "issued",
        "recorded",
        "authoredOn",
        "lastUpdated",
        "timestamp",
        "created",
        "sent",
        "received",
        "instant",
        "dateTime",
        "birthDate",
    }
)
# Safe Harbor: keys removed wherever they occur (identifier categories A-R of 164.514(b)(2)(i)).
_SH_DROP = frozenset(
    {
        "name",
        "alias",
        "telecom",
        "photo",
        "contact",
        "link",
        "text",
        "div",
        "note",
        "comment",
        "data",
        "url",
        "presentedForm",
        "patientInstruction",
        "description",
        "udiCarrier",
        "serialNumber",
        "lotNumber",
        "distinctIdentifier",
        "valueString",
        "valueMarkdown",
        "valueAttachment",
        "valueUri",
        "valueUrl",
        "valueCanonical",
        "valueHumanName",
        "valueAddress",
        "valueContactPoint",
        "valueSignature",
        "valueBase64Binary",
        "valueIdentifier",
        "identifier",
        "content",
        "attachment",
    }
)
_SH_STRING_KEYS = frozenset(
    {
        "resourceType",
        "status",
        "code",
        "system",
        "version",
        "display",
        "unit",
        "use",
        "gender",
        "intent",
        "priority",
        "state",
        "country",
        "postalCode",
        "comparator",
        "type",
        "language",
        "mode",
        "valueCode",
        "category",
        "criticality",
        "severity",
        "outcome",
        "kind",
        "currency",
    }
)
_SH_NUMBER_KEYS = frozenset(
    {
        "value",
        "valueInteger",
        "valueDecimal",
        "valuePositiveInt",
        "valueUnsignedInt",
        "rank",
        "sequence",
        "count",
        "countMax",
        "lowerLimit",
        "upperLimit",
        "factor",
        "dimensions",
        "period",
        "periodMax",
        "frequency",
        "frequencyMax",
        "duration",
        "durationMax",
        "offset",
    }
)
_SH_ADDRESS_KEYS = ("use", "type", "state", "country")
# per-key actions of the walk (0 = generic handling by value type)
_A_GENERIC, _A_DROP, _A_TEXT, _A_OBSTEXT, _A_DISPLAY, _A_ADDRESS, _A_ID, _A_REF, _A_IDENT, _A_EXT, _A_POSTAL = range(11)
_SAFE_EXT_VALUES = frozenset({"valueCode", "valueCoding", "valueCodeableConcept", "valueBoolean"})


@lru_cache(maxsize=1)
def low_population_zip3() -> frozenset[str]:
    text = pkg_resources.files("streams.route").joinpath("data/safe_harbor_zip3.txt").read_text()
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def zip3(value: str) -> str | None:
    """``02139-1234`` -> ``021``; a low-population prefix -> ``000``; non-US formats -> None (removed)."""
    m = _US_ZIP.match(value.strip())
    if m is None:
        return None
    prefix = m.group(1)
    return "000" if prefix in low_population_zip3() else prefix


class _Scope:
    """Element-path prefixes a transform is limited to (``value[x]`` matches any typed variant)."""

    __slots__ = ("_memo", "_rx")

    def __init__(self, paths: list[str]) -> None:
        alts = [re.escape(p.strip()).replace(r"\[x\]", "[A-Z][A-Za-z]*") for p in paths]
        self._rx = re.compile(r"^(?:" + "|".join(alts) + r")(?:\.|$)")
        self._memo: dict[str, bool] = {}

    def covers(self, path: str) -> bool:
        hit = self._memo.get(path)
        if hit is None:
            hit = self._rx.match(path) is not None
            if len(self._memo) < _CACHE_LIMIT:
                self._memo[path] = hit
        return hit


def _scope(spec: TransformSpec) -> _Scope | None:
    return _Scope(spec.paths) if spec.paths else None


def _in(scope: _Scope | None, path: str) -> bool:
    return scope is None or scope.covers(path)


def _key(dest: DestinationSpec, spec: TransformSpec, keys: Mapping[str, bytes] | None) -> bytes:
    env = spec.key_env or ""
    key = (keys or {}).get(env)
    if key is None:
        raw = os.environ.get(env)
        key = raw.encode() if raw else None
    if not key or len(key) < 16:
        # fail closed at start-up: never route with a missing or guessable key (the key itself is never logged)
        raise RoutePolicyError(
            f"destination {dest.name!r}: transform {spec.kind!r} needs an HMAC key of >= 16 bytes in ${env}"
        )
    return key


class _Ctx:
    __slots__ = ("offset", "ref", "rtype")

    def __init__(self, offset: int, ref: date) -> None:
        self.offset = offset
        self.ref = ref
        self.rtype = ""


def _ref_date(event: dict[str, Any]) -> date:
    when = event.get("occurred_at") or event.get("received_at") or ""
    try:
        return date.fromisoformat(when[:10])
    except (TypeError, ValueError):
        return datetime.now(UTC).date()


def _age_capped(birth: str, ref: date) -> str | None:
    """The capped birth year if the patient is over 89 at ``ref``, else None."""
    try:
        by = int(birth[:4])
        bm = int(birth[5:7]) if len(birth) >= 7 else 1
        bd = int(birth[8:10]) if len(birth) >= 10 else 1
    except ValueError:
        return None
    age = ref.year - by - ((ref.month, ref.day) < (bm, bd))
    return f"{ref.year - 90:04d}" if age > 89 else None


def _shift(value: str, days: int) -> str:
    """Shift the date part, keep precision and any time/zone suffix."""
    n = len(value)
    if n == 4:
        return value
    if n == 7:
        d = date(int(value[:4]), int(value[5:7]), 15) + timedelta(days=days)
        return d.isoformat()[:7]
    try:
        d = date.fromisoformat(value[:10]) + timedelta(days=days)
    except ValueError:
        return value[:4]
    return d.isoformat() + value[10:]


class Transformer:
    """Rewrites a projected envelope in place (its resources are rebuilt, the input is never touched)."""

    def __init__(self, dest: DestinationSpec, tries: dict[str, Node], keys: Mapping[str, bytes] | None) -> None:
        self.tries = tries
        self.sh = dest.profile == "safe-harbor"
        self.allow_ext = frozenset(dest.allow_extensions)
        self.filter_ext = self.sh or bool(self.allow_ext)
        self.pseudo_key: bytes | None = None
        self.pseudo_scope: _Scope | None = None
        self.pseudo_all = False
        self.shift_key: bytes | None = None
        self.shift_scope: _Scope | None = None
        self.max_shift = 0
        self.year: list[_Scope | None] = []
        self.zip: list[_Scope | None] = []
        self.agecap: list[_Scope | None] = []
        self.droptext: list[_Scope | None] = []
        for spec in dest.transforms:
            if spec.kind == "pseudonym":
                self.pseudo_key = _key(dest, spec, keys)
                self.pseudo_scope = _scope(spec)
                self.pseudo_all = not spec.paths
            elif spec.kind == "date-shift":
                if self.sh:
                    raise RoutePolicyError(
                        f"destination {dest.name!r}: date-shift is not a Safe Harbor method (dates must be reduced"
                        " to the year); drop the transform or the safe-harbor profile"
                    )
                self.shift_key = _key(dest, spec, keys)
                self.shift_scope = _scope(spec)
                self.max_shift = spec.max_shift_days
            elif spec.kind == "date-year":
                self.year.append(_scope(spec))
            elif spec.kind == "zip3":
                self.zip.append(_scope(spec))
            elif spec.kind == "age-cap":
                self.agecap.append(_scope(spec))
            elif spec.kind == "drop-text":
                self.droptext.append(_scope(spec))
        self.scoped = any(
            s is not None
            for s in (self.pseudo_scope, self.shift_scope, *self.year, *self.zip, *self.agecap, *self.droptext)
        )
        self._actions: dict[str, int] = {}
        self._ps_memo: dict[str, str] = {}
        self._offset_memo: dict[str, int] = {}

    # -- keyed functions -------------------------------------------------------------------------
    def pseudonym(self, value: str) -> str:
        out = self._ps_memo.get(value)
        if out is None:
            assert self.pseudo_key is not None
            out = "ps-" + hmac.new(self.pseudo_key, value.encode(), hashlib.sha256).hexdigest()[:40]
            if len(self._ps_memo) >= _CACHE_LIMIT:
                self._ps_memo.clear()
            self._ps_memo[value] = out
        return out

    def shift_days(self, patient_key: str) -> int:
        off = self._offset_memo.get(patient_key)
        if off is None:
            assert self.shift_key is not None
            digest = hmac.new(self.shift_key, patient_key.encode(), hashlib.sha256).digest()
            m = int.from_bytes(digest[:8], "big") % (2 * self.max_shift)
            off = m - self.max_shift if m < self.max_shift else m - self.max_shift + 1  # never 0
            if len(self._offset_memo) >= _CACHE_LIMIT:
                self._offset_memo.clear()
            self._offset_memo[patient_key] = off
        return off

    def _ps_ref(self, ref: str) -> str:
        parts = ref.split("/")
        if len(parts) >= 2 and "://" not in ref and not ref.startswith(("urn:", "#")):
            return f"{parts[0]}/{self.pseudonym(parts[0] + '/' + parts[1])}"
        if ref.startswith("#"):
            return ref  # contained resource anchor, no identity
        return "urn:clinstream:" + self.pseudonym(ref)

    # -- envelope --------------------------------------------------------------------------------
    def __call__(self, env: dict[str, Any], event: dict[str, Any]) -> bool:
        patient = env["patient"]
        euid = patient.get("euid")
        offset = 0
        if self.shift_key is not None:
            idents = patient.get("identifiers") or (event.get("patient") or {}).get("identifiers") or []
            basis = euid or (f"{idents[0].get('system')}|{idents[0].get('value')}" if idents else event["event_id"])
            offset = self.shift_days(basis)
        ctx = _Ctx(offset, _ref_date(event))
        walked = []
        for r in env["resources"]:
            ctx.rtype = r["resourceType"]
            out = self._obj(r, ctx.rtype, ctx)
            if len(out) > 1:
                walked.append(out)
        env["resources"] = walked
        for r in env["resources"]:
            if "resourceType" not in r:  # the walk keeps it, but never emit an untyped resource
                return False
        if self.sh:
            patient["euid"] = self.pseudonym("euid:" + euid) if (euid and self.pseudo_key) else None
            patient["identifiers"] = []
            env["source_message_id"] = None
        else:
            if euid and self.pseudo_all:
                patient["euid"] = self.pseudonym("euid:" + euid)
            if patient["identifiers"] and self.pseudo_key and _in(self.pseudo_scope, "Patient.identifier"):
                patient["identifiers"] = [
                    {**i, "value": self.pseudonym(f"{i.get('system') or ''}|{i['value']}")}
                    for i in patient["identifiers"]
                ]
        for field in ("occurred_at", "received_at"):
            value = env.get(field)
            if isinstance(value, str) and _DATE_RE.match(value):
                env[field] = self._date(value, field, "", ctx, envelope=True)
        return True

    def disclosed(self, resources: list[dict[str, Any]], seen: dict[str, None]) -> dict[str, None]:
        """Element paths still present after the transforms (what was really sent)."""
        out: dict[str, None] = {}
        for r in resources:
            project(self.tries[r["resourceType"]], r, out)
        return out

    # -- the walk --------------------------------------------------------------------------------
    def _date(self, value: str, key: str, path: str, ctx: _Ctx, *, envelope: bool = False) -> str:
        if key == "birthDate" and (self.sh or any(_in(s, path) for s in self.agecap)):
            capped = _age_capped(value, ctx.ref)
            if capped is not None:
                return capped
        if self.shift_key is not None and (envelope or _in(self.shift_scope, path)):
            value = _shift(value, ctx.offset)
        if self.sh or any(envelope or _in(s, path) for s in self.year):
            value = value[:4]
        return value

    def _classify(self, k: str) -> int:
        """What to do with key ``k`` (memoised: FHIR has a few hundred element names)."""
        if self.sh and (k in _SH_DROP or k[:1] == "_"):
            return _A_DROP
        if self.droptext and k in _TEXT_KEYS:
            return _A_TEXT
        if self.droptext and k in _OBS_TEXT_KEYS:
            return _A_OBSTEXT
        if self.sh:
            if k == "display":
                return _A_DISPLAY
            if k == "address":
                return _A_ADDRESS
            if k == "id":
                return _A_ID
            if k == "reference":
                return _A_REF
        else:
            if k in _IDENT_KEYS and self.pseudo_key:
                return _A_IDENT
            if self.pseudo_all and k == "reference":
                return _A_REF
            if self.pseudo_all and k == "id":
                return _A_ID
        if k in _EXT_KEYS and self.filter_ext:
            return _A_EXT
        if k == "postalCode" and self.zip:
            return _A_POSTAL
        return _A_GENERIC

    def _obj(self, d: dict[str, Any], path: str, ctx: _Ctx, depth: int = 0) -> dict[str, Any]:
        out: dict[str, Any] = {}
        scoped = self.scoped
        sh = self.sh
        actions = self._actions
        depth += 1
        for k, v in d.items():
            # inline fast path for the commonest leaf: a plain string under a key with no special rule
            if type(v) is str and actions.get(k) == _A_GENERIC and not (v[:1].isdigit() and _DATE_RE.match(v)):
                if not sh or k in _SH_STRING_KEYS:
                    out[k] = v
                continue
            r = self._val(k, v, f"{path}.{k}" if scoped else path, d, ctx, depth)
            if r is not _DROP:
                out[k] = r
        return out

    def _val(self, k: str, v: Any, p: str, parent: dict[str, Any], ctx: _Ctx, depth: int) -> Any:
        a = self._actions.get(k)
        if a is None:
            a = self._classify(k)
            if len(self._actions) < 10_000:  # keys come from outside: keep the memo bounded
                self._actions[k] = a
        if a:
            if a == _A_DROP:
                return _DROP
            if a == _A_TEXT:
                if any(_in(s, p) for s in self.droptext):
                    return _DROP
            elif a == _A_OBSTEXT:
                if ctx.rtype == "Observation" and any(_in(s, p) for s in self.droptext):
                    return _DROP
            elif a == _A_DISPLAY:
                if "code" not in parent:
                    return _DROP  # Reference.display & co. carry names; Coding.display carries a code's meaning
            elif a == _A_ADDRESS:
                return self._sh_address(v)
            elif a == _A_ID or a == _A_REF:
                if type(v) is not str or not self.pseudo_key:
                    return _DROP if self.sh else v
                if a == _A_REF:
                    return self._ps_ref(v)
                if depth == 1:
                    return self.pseudonym(f"{ctx.rtype}/{v}")
                return self.pseudonym(v) if self.sh else v
            elif a == _A_IDENT:
                if _in(self.pseudo_scope, p):
                    return self._ps_identifiers(v, p, ctx, depth)
            elif a == _A_EXT:
                return self._extensions(v, p, ctx, depth)
            elif a == _A_POSTAL:
                if type(v) is str and any(_in(s, p) for s in self.zip):
                    z = zip3(v)
                    return _DROP if z is None else z
        t = type(v)
        if t is dict:
            r = self._obj(v, p, ctx, depth)
            return r if r else _DROP
        if t is list:
            items = []
            for x in v:
                r = (
                    (self._obj(x, p, ctx, depth) or _DROP)
                    if type(x) is dict
                    else self._val(k, x, p, parent, ctx, depth)
                )
                if r is not _DROP:
                    items.append(r)
            return items if items else _DROP
        if t is str:
            if v and v[0].isdigit() and _DATE_RE.match(v) and (len(v) > 4 or k in _DATEISH or k.endswith("Date")):
                return self._date(v, k, p, ctx)
            if self.sh and k not in _SH_STRING_KEYS:
                return _DROP
            return v
        if t is bool or v is None:
            return v
        if self.sh and k not in _SH_NUMBER_KEYS:
            return _DROP  # a bare number under an unknown key may be an account/record number
        return v

    def _ps_identifiers(self, v: Any, p: str, ctx: _Ctx, depth: int) -> Any:
        items = v if type(v) is list else [v]
        out = []
        for ident in items:
            if type(ident) is not dict:
                continue
            walked = self._obj(ident, p, ctx, depth)
            if type(ident.get("value")) is str:
                walked["value"] = self.pseudonym(f"{ident.get('system') or ''}|{ident['value']}")
            walked.pop("assigner", None)  # may name the assigning facility with patient context
            if walked:
                out.append(walked)
        if not out:
            return _DROP
        return out if type(v) is list else out[0]

    def _sh_address(self, v: Any) -> Any:
        items = v if type(v) is list else [v]
        out = []
        for a in items:
            if type(a) is not dict:
                continue
            g = {k: a[k] for k in _SH_ADDRESS_KEYS if type(a.get(k)) is str}
            if type(a.get("postalCode")) is str:
                z = zip3(a["postalCode"])
                if z is not None:
                    g["postalCode"] = z
            if g:
                out.append(g)
        if not out:
            return _DROP
        return out if type(v) is list else out[0]

    def _extensions(self, v: Any, p: str, ctx: _Ctx, depth: int) -> Any:
        if type(v) is not list:
            return _DROP
        out = []
        for ext in v:
            if type(ext) is not dict or ext.get("url") not in self.allow_ext:
                continue
            if self.sh and not self._safe_ext(ext):
                continue
            walked = self._obj({k: x for k, x in ext.items() if k != "url"}, p, ctx, depth)
            if walked:
                out.append({"url": ext["url"], **walked})
        return out if out else _DROP

    def _safe_ext(self, ext: dict[str, Any]) -> bool:
        for k, x in ext.items():
            if k in ("url", "id"):
                continue
            if k == "extension":
                if type(x) is not list or not all(type(e) is dict and self._safe_ext(e) for e in x):
                    return False
            elif k not in _SAFE_EXT_VALUES:
                return False
        return True


def compile_transforms(
    dest: DestinationSpec, tries: dict[str, Node], keys: Mapping[str, bytes] | None
) -> Transformer | None:
    if not dest.transforms and dest.profile is None and not dest.allow_extensions:
        return None
    return Transformer(dest, tries, keys)
