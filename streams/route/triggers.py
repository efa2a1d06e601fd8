"""Workflow triggers: "lab result posted -> review task", "discharge -> follow-up outreach".

A ``TriggerSpec`` names event types and conditions on FHIR elements; compiled once, it turns a
matching event into a FHIR R4 ``Task`` for its queue (topic ``tasks.<queue>``).

Condition grammar (one per string; ``match: all`` needs every one, ``any`` one of them)::

    <ResourceType>.<path> = <value>          Encounter.status = finished
    <ResourceType>.<path> != <value>
    <ResourceType>.<path> in [a, b, c]        Observation.interpretation in [H, HH, A]
    <ResourceType>.<path> not in [a, b]
    <ResourceType>.<path> > | >= | < | <= n   Observation.value[x].value > 10
    <ResourceType>.<path> exists

Paths walk objects and arrays; a Coding / CodeableConcept compares by its ``code`` values (so
``interpretation in [H]`` matches ``interpretation[].coding[].code``). Under ``match: all`` the
conditions on the trigger's first resource type must hold on one and the same resource, which
becomes the Task's ``focus``; conditions on other types may be met by any resource of that type.
The Task id is derived from event id + trigger name, so a replayed event yields the same Task.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.ids import uuid5_str
from streams.route.errors import TriggerError
from streams.route.eventtypes import compile_event_types
from streams.route.fhirmeta import R4_RESOURCE_TYPES
from topology.model import TriggerSpec

_TASK_NS = uuid.UUID("8f0e4a52-1b7d-4e59-a1c4-3a0f6f3b9d10")
_COND = re.compile(
    r"^\s*(?P<path>[A-Z][A-Za-z]+(?:\.[a-z][A-Za-z0-9]*(?:\[x\])?)+)\s*"
    r"(?:(?P<exists>exists)|(?P<op>not\s+in|in|!=|=|>=|<=|>|<)\s*(?P<val>.+?))\s*$"
)
_DURATION = re.compile(
    r"^P(?:(?P<y>\d+)Y)?(?:(?P<mo>\d+)M)?(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?:(?P<h>\d+)H)?(?:(?P<mi>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)
QUEUE_SYSTEM = "urn:clinstream:queue"
TRIGGER_SYSTEM = "urn:clinstream:trigger"


@dataclass(frozen=True, slots=True)
class TriggeredTask:
    queue: str
    topic: str
    key: str | None  # the patient's EUID: keep one patient's tasks in order on one partition
    task: dict[str, Any]


def parse_duration(text: str) -> Callable[[datetime], datetime]:
    """ISO 8601 duration -> a function adding it (years/months by the calendar, clamped to month end)."""
    m = _DURATION.match(text.strip())
    if m is None or text.strip() in ("P", "PT"):
        raise TriggerError(f"due_in {text!r} is not an ISO 8601 duration (e.g. P1D, PT4H, P2W)")
    g = {k: float(v) if v else 0.0 for k, v in m.groupdict().items()}
    months = int(g["y"]) * 12 + int(g["mo"])
    delta = timedelta(weeks=g["w"], days=g["d"], hours=g["h"], minutes=g["mi"], seconds=g["s"])

    def add(start: datetime) -> datetime:
        if months:
            total = start.month - 1 + months
            year, month = start.year + total // 12, total % 12 + 1
            for day in (start.day, 30, 29, 28):
                try:
                    start = start.replace(year=year, month=month, day=day)
                    break
                except ValueError:
                    continue
        return start + delta

    return add


def _values(node: Any, segs: tuple[str, ...]) -> list[Any]:
    """All values at ``segs`` below ``node``, arrays flattened; ``x[x]`` matches any typed variant."""
    current = [node]
    for seg in segs:
        nxt: list[Any] = []
        for item in current:
            if type(item) is not dict:
                continue
            if seg.endswith("[x]"):
                stem = seg[:-3]
                found = [v for k, v in item.items() if k.startswith(stem) and k[len(stem) : len(stem) + 1].isupper()]
            else:
                found = [item[seg]] if seg in item else []
            for v in found:
                nxt.extend(v if type(v) is list else [v])
        current = nxt
    return current


def _atoms(value: Any) -> list[Any]:
    """What a value compares as: a Coding/CodeableConcept by its codes, a Quantity by its value."""
    if type(value) is dict:
        out = [c.get("code") for c in value.get("coding") or () if type(c) is dict]
        if "code" in value:
            out.append(value["code"])
        if "value" in value:
            out.append(value["value"])
        return [x for x in out if x is not None]
    return [value]


def _literal(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


@dataclass(frozen=True, slots=True)
class Condition:
    rtype: str
    segs: tuple[str, ...]
    test: Callable[[list[Any]], bool]
    exists: bool = False  # 'exists' looks at the elements themselves, not at their codes/values

    def holds(self, resource: dict[str, Any]) -> bool:
        values = _values(resource, self.segs)
        if self.exists:
            return bool(values)
        return self.test([a for v in values for a in _atoms(v)])


def compile_condition(text: str) -> Condition:
    m = _COND.match(text)
    if m is None:
        raise TriggerError(
            f"condition {text!r}: expected '<Type>.<path> <op> <value>' (ops: = != in 'not in' > < exists)"
        )
    rtype, *segs = m.group("path").split(".")
    if rtype not in R4_RESOURCE_TYPES:
        raise TriggerError(f"condition {text!r}: {rtype!r} is not a FHIR R4 resource type")
    if m.group("exists"):
        return Condition(rtype, tuple(segs), bool, exists=True)
    op = " ".join(m.group("op").split())
    raw = m.group("val").strip()
    if op in ("in", "not in"):
        if not (raw.startswith("[") and raw.endswith("]")):
            raise TriggerError(f"condition {text!r}: '{op}' needs a list like [H, HH, A]")
        wanted = frozenset(_literal(x) for x in raw[1:-1].split(",") if x.strip())
        if op == "in":
            return Condition(rtype, tuple(segs), lambda atoms: any(str(a) in wanted for a in atoms))
        return Condition(rtype, tuple(segs), lambda atoms: bool(atoms) and all(str(a) not in wanted for a in atoms))
    if op in ("=", "!="):
        want = _literal(raw)
        if op == "=":
            return Condition(rtype, tuple(segs), lambda atoms: any(_eq(a, want) for a in atoms))
        return Condition(rtype, tuple(segs), lambda atoms: bool(atoms) and not any(_eq(a, want) for a in atoms))
    try:
        bound = float(raw)
    except ValueError as exc:
        raise TriggerError(f"condition {text!r}: {op} needs a number") from exc
    cmp: Callable[[float], bool] = {
        ">": lambda x: x > bound,
        ">=": lambda x: x >= bound,
        "<": lambda x: x < bound,
        "<=": lambda x: x <= bound,
    }[op]
    return Condition(
        rtype,
        tuple(segs),
        lambda atoms: any(type(a) in (int, float) and cmp(a) for a in atoms),
    )


def _eq(atom: Any, want: str) -> bool:
    if type(atom) is bool:
        return str(atom).lower() == want.lower()
    return str(atom) == want


def _parse_when(value: str | None) -> datetime:
    if value:
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
        except ValueError:
            pass
    return datetime.now(UTC)


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


class CompiledTrigger:
    def __init__(self, spec: TriggerSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.queue = spec.queue
        self._matches = compile_event_types(spec.event_types)
        self._conds = [compile_condition(c) for c in spec.conditions]
        self._due = parse_duration(spec.due_in)
        self._focus_type = self._conds[0].rtype if self._conds else None

    def _focus(self, resources: list[dict[str, Any]]) -> dict[str, Any] | bool | None:
        """The focus resource if the trigger fires (True when it fires without one), else None."""
        conds = self._conds
        if not conds:
            return True
        if self.spec.match == "any":
            for r in resources:
                rt = r.get("resourceType")
                if any(c.rtype == rt and c.holds(r) for c in conds):
                    return r
            return None
        primary = [c for c in conds if c.rtype == self._focus_type]
        others = [c for c in conds if c.rtype != self._focus_type]
        for c in others:
            if not any(r.get("resourceType") == c.rtype and c.holds(r) for r in resources):
                return None
        for r in resources:
            if r.get("resourceType") == self._focus_type and all(c.holds(r) for c in primary):
                return r
        return None

    def fire(self, event: dict[str, Any]) -> TriggeredTask | None:
        if not self._matches(event.get("event_type") or ""):
            return None
        resources = [r for r in event.get("resources") or () if type(r) is dict]
        focus = self._focus(resources)
        if focus is None:
            return None
        spec = self.spec
        start = _parse_when(event.get("occurred_at") or event.get("received_at"))
        due = _iso(self._due(start))
        euid = (event.get("patient") or {}).get("euid")
        task: dict[str, Any] = {
            "resourceType": "Task",
            "id": uuid5_str(_TASK_NS, f"{event['event_id']}\x1f{spec.name}"),
            "meta": {
                "tag": [{"system": QUEUE_SYSTEM, "code": spec.queue}, {"system": TRIGGER_SYSTEM, "code": spec.name}]
            },
            "status": "requested",
            "intent": "order",
            "priority": spec.priority,
            "code": {"coding": [{"system": spec.task_system, "code": spec.task_code}]},
            "authoredOn": _iso(start),
            "executionPeriod": {"start": _iso(start), "end": due},
            "restriction": {"period": {"end": due}},
        }
        if spec.description:
            task["description"] = spec.description
        if euid:
            task["for"] = {
                "reference": f"Patient/{euid}",
                "identifier": {"system": "urn:clinstream:euid", "value": euid},
            }
        if isinstance(focus, dict):
            rtype = focus.get("resourceType")
            task["focus"] = (
                {"reference": f"{rtype}/{focus['id']}"} if focus.get("id") else {"type": rtype, "display": rtype}
            )
        task["input"] = [{"type": {"text": "source-event"}, "valueString": str(event["event_id"])}]
        return TriggeredTask(spec.queue, f"tasks.{spec.queue}", euid, task)


class TriggerSet:
    """All triggers of a topology; ``evaluate(event)`` returns the Tasks to emit (possibly none)."""

    def __init__(self, specs: Iterable[TriggerSpec]) -> None:
        self.triggers = [CompiledTrigger(s) for s in specs]
        names = [t.name for t in self.triggers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise TriggerError(f"duplicate trigger name(s): {', '.join(dupes)} (task ids derive from them)")

    def evaluate(self, event: dict[str, Any]) -> list[TriggeredTask]:
        out = []
        for t in self.triggers:
            fired = t.fire(event)
            if fired is not None:
                out.append(fired)
        return out


def compile_triggers(specs: Iterable[TriggerSpec]) -> TriggerSet:
    try:
        return TriggerSet(specs)
    except TriggerError:
        raise
    except (KeyError, ValueError) as exc:
        raise TriggerError(str(exc)) from exc
