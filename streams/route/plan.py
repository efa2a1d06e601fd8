"""Compile a destination policy once; apply it to plain event dicts on the hot path.

``compile_destination(dest)`` -> ``DestinationPlan``; ``plan.apply(event, consent)``
-> ``Delivered`` (projected envelope + disclosed element paths + AuditEvent) or
``Denied(reason)``. Nothing here touches Kafka or pydantic per event.

Order of checks: event type, then consent (per resource type), then the allow-list
projection (default deny: unlisted elements and unlisted resource types never
leave), then transforms / the Safe Harbor profile. Reasons a destination is
skipped: ``event-type``, ``consent-denied``, ``no-consent-default-deny``,
``no-patient`` (safe-harbor/pseudonym destinations cannot key an event without a
patient), ``nothing-allowed``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

from streams.route.allow import Node, compile_allow, project
from streams.route.audit import DisclosureTemplate
from streams.route.consent import ConsentState, evaluate, recipient_ids
from streams.route.eventtypes import compile_event_types
from streams.route.transforms import Transformer, compile_transforms
from topology.model import DestinationSpec, Topology


# NamedTuples rather than frozen dataclasses: built once per event x destination, and cheaper to create.
class Delivered(NamedTuple):
    event: dict[str, Any]
    elements: list[str]
    disclosure: dict[str, Any]

    @property
    def delivered(self) -> bool:
        return True


class Denied(NamedTuple):
    reason: str

    @property
    def delivered(self) -> bool:
        return False


RouteDecision = Delivered | Denied

_DENIED_EVENT_TYPE = Denied("event-type")
_DENIED_NOTHING = Denied("nothing-allowed")


class DestinationPlan:
    """A destination's compiled policy. Immutable after compile; safe to share across events."""

    __slots__ = (
        "_consent_default",
        "_disclosure",
        "_matches",
        "_patient_ids",
        "_recipient",
        "_transformer",
        "_tries",
        "name",
        "organization",
        "purpose",
        "spec",
        "topic",
    )

    def __init__(self, spec: DestinationSpec, tries: dict[str, Node], transformer: Transformer | None) -> None:
        self.spec = spec
        self.name = spec.name
        self.purpose = spec.purpose
        self.topic = spec.topic
        self.organization = spec.organization
        self._matches = compile_event_types(spec.event_types)
        self._tries = tries
        # the envelope's patient.identifiers are Patient.identifier by another name: same rule
        patient = tries.get("Patient", {})
        self._patient_ids = patient.get("identifier", (0, ""))[0] is None
        self._transformer = transformer
        self._consent_default = spec.consent_default
        self._recipient = recipient_ids(spec.name, spec.organization)
        self._disclosure = DisclosureTemplate(spec.name, spec.purpose, spec.organization, spec.topic)

    @property
    def resource_types(self) -> frozenset[str]:
        return frozenset(self._tries)

    def accepts_event_type(self, event_type: str) -> bool:
        return self._matches(event_type)

    def apply(
        self,
        event: dict[str, Any],
        consent: ConsentState | str | bytes | dict[str, Any] | None = None,
        *,
        at: datetime | None = None,
        recorded: str | None = None,
    ) -> RouteDecision:
        """Decide and project one event for this destination. ``event`` is never modified.

        ``consent`` is the patient's ``ConsentState`` (or its ``to_json()`` str / ``to_dict()`` dict,
        as stored in a table; keeping the object avoids re-parsing and keeps its decision memo)."""
        if not self._matches(event.get("event_type") or ""):
            return _DENIED_EVENT_TYPE
        if consent is not None and type(consent) is not ConsentState:
            consent = ConsentState.from_json(consent)
        tries = self._tries
        resources = [r for r in event.get("resources") or () if type(r) is dict and r.get("resourceType") in tries]
        if not resources:
            return _DENIED_NOTHING
        denied_types: frozenset[str] = frozenset()
        if consent is not None or self._consent_default == "deny":
            decision = evaluate(
                consent,
                purpose=self.purpose,
                destination=self.name,
                organization=self.organization,
                resource_types=[r["resourceType"] for r in resources],
                at=at,
                default=self._consent_default,
                recipient=self._recipient,
            )
            if not decision.permitted:
                return Denied(decision.reason)
            denied_types = decision.denied_types
        seen: dict[str, None] = {}
        projected = []
        for r in resources:
            rtype = r["resourceType"]
            if rtype in denied_types:
                continue
            out = project(tries[rtype], r, seen)
            if out:
                out["resourceType"] = rtype
                projected.append(out)
        if not projected:
            return _DENIED_NOTHING
        patient = event.get("patient") or {}
        euid = patient.get("euid")
        env: dict[str, Any] = {
            "event_id": event["event_id"],
            "event_type": event.get("event_type"),
            "source": event.get("source"),
            "source_message_id": event.get("source_message_id"),
            "patient": {
                "euid": euid,
                "identifiers": list(patient.get("identifiers") or ()) if self._patient_ids else [],
            },
            "occurred_at": event.get("occurred_at"),
            "received_at": event.get("received_at"),
            "resources": projected,
            "destination": self.name,
            "purpose": self.purpose,
            "lineage": event.get("lineage"),
        }
        if self._transformer is not None:
            if not self._transformer(env, event):
                return _DENIED_NOTHING
            projected = env["resources"]
            if not projected:
                return _DENIED_NOTHING
            seen = self._transformer.disclosed(projected, seen)
        elements = list(seen)
        disclosure = self._disclosure.build(env["event_id"], env["event_type"], euid, elements, recorded)
        return Delivered(env, elements, disclosure)


def compile_destination(dest: DestinationSpec, *, keys: Mapping[str, bytes] | None = None) -> DestinationPlan:
    """Compile once per topology load. ``keys`` maps a transform's ``key_env`` name to key bytes
    (tests, secret stores); otherwise the key is read from that environment variable.
    Raises ``RoutePolicyError`` for a bad path, a missing key or an incompatible profile."""
    tries = compile_allow(dest.allow)
    transformer = compile_transforms(dest, tries, keys)
    return DestinationPlan(dest, tries, transformer)


def load_keys(topology: Topology, environ: Mapping[str, str] | None = None) -> dict[str, bytes]:
    """The HMAC keys the topology's transforms name (``key_env``), read from the environment.

    Only names that are set are returned; ``compile_destination`` then fails with a
    ``RoutePolicyError`` naming any missing one (keys are never logged)."""
    env = os.environ if environ is None else environ
    names = {t.key_env for d in topology.destinations for t in d.transforms if t.key_env}
    return {name: env[name].encode() for name in sorted(names) if env.get(name)}


def compile_topology(
    destinations: list[DestinationSpec], *, keys: Mapping[str, bytes] | None = None
) -> list[DestinationPlan]:
    return [compile_destination(d, keys=keys) for d in destinations]
