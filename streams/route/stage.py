"""The route stage shell: ``identified.events`` -> ``dest.<destination>``, ``audit.disclosures``, ``tasks.*``.

For every destination the compiled plan decides (event-type filter, consent for
the destination's purpose), projects to the allow-list and applies transforms;
each delivery is recorded as a disclosure on ``audit.disclosures``. FHIR
``Consent`` resources passing through update the patient's consent state first
(kept per EUID in an injected mapping: a Faust table in the worker, changelogged
and co-partitioned with the EUID-keyed input; a dict in tests) and are published
on the compacted ``consent.decisions``, so a consent takes effect for everything
after it. Workflow triggers emit FHIR Tasks to ``tasks.<queue>``.

Destination records are keyed by the *projected* EUID (a keyed pseudonym, or none
for de-identified destinations): the real EUID as a Kafka key would itself be a
disclosure. The audit record keeps the real EUID.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field

import orjson

from schemas import headers as H
from schemas import metrics
from schemas.envelope import encode_event, schema_fingerprint
from streams.route.consent import ConsentState, update_from_event
from streams.route.plan import Delivered, DestinationPlan, compile_topology, load_keys
from streams.route.triggers import TriggerSet, compile_triggers
from streams.stage import InRecord, Outcome, Output, event_of
from topology.model import AUDIT, CONSENT, IDENTIFIED, Topology


@dataclass
class RouteStage:
    plans: Sequence[DestinationPlan]
    triggers: TriggerSet | None = None
    input_topics: Sequence[str] = (IDENTIFIED,)
    consent: MutableMapping[str, str] = field(default_factory=dict)
    name: str = "route"
    _cache: dict[str, tuple[str, ConsentState]] = field(default_factory=dict)

    @classmethod
    def from_topology(cls, topology: Topology, input_topic: str = IDENTIFIED,
                      consent: MutableMapping[str, str] | None = None) -> RouteStage:
        plans = compile_topology(topology.destinations, keys=load_keys(topology))
        triggers = compile_triggers(topology.triggers) if topology.triggers else None
        return cls(plans=plans, triggers=triggers, input_topics=(input_topic,),
                   consent=consent if consent is not None else {})

    def consent_state(self, euid: str | None) -> ConsentState | None:
        if not euid:
            return None
        stored = self.consent.get(euid)
        if stored is None:
            return None
        cached = self._cache.get(euid)
        if cached is not None and cached[0] == stored:
            return cached[1]
        state = ConsentState.from_json(stored)
        self._cache[euid] = (stored, state)
        return state

    def process(self, record: InRecord) -> Outcome:
        event = event_of(record)
        euid = event["patient"].get("euid")
        outputs: list[Output] = []
        state = self.consent_state(euid)
        if euid:
            updated = update_from_event(state, event)  # ConsentError -> DLQ (raised to the shell)
            if updated is not None:
                stored = updated.to_json()
                self.consent[euid] = stored
                self._cache[euid] = (stored, updated)
                state = updated
                outputs.append(Output(CONSENT, stored.encode(), euid.encode(),
                                      H.encode([(H.EVENT_ID, event["event_id"])])))
        trace = record.headers.get(H.TRACEPARENT, "")
        hdrs = H.encode([
            (H.EVENT_ID, event["event_id"]),
            (H.SOURCE, event["source"]),
            (H.TRACEPARENT, trace),
            (H.RECEIVED_AT, event["received_at"]),
        ])
        audit_key = euid.encode() if euid else record.key
        for plan in self.plans:
            decision = plan.apply(event, state)
            if not isinstance(decision, Delivered):
                if decision.reason.startswith(("consent", "no-consent")):
                    metrics.consent_denied(plan.name, decision.reason)
                continue
            metrics.disclosure(plan.name, plan.purpose)
            projected_euid = decision.event["patient"].get("euid")
            dest_key = projected_euid.encode() if projected_euid else None
            projected = decision.event
            # headers travel with the record: they carry the projected values, never the originals
            dest_hdrs = H.encode([
                (H.EVENT_ID, projected["event_id"]),
                (H.SOURCE, projected.get("source") or ""),
                (H.TRACEPARENT, trace),
                (H.RECEIVED_AT, projected.get("received_at") or ""),
                (H.SCHEMA_FINGERPRINT, schema_fingerprint()),
            ])
            outputs.append(Output(plan.topic, encode_event(projected), dest_key, dest_hdrs))
            outputs.append(Output(AUDIT, orjson.dumps(decision.disclosure), audit_key, hdrs))
        if self.triggers is not None:
            for task in self.triggers.evaluate(event):
                outputs.append(Output(task.topic, orjson.dumps(task.task),
                                      task.key.encode() if task.key else None, hdrs))
        if not outputs:
            return Outcome.drop("no-destination")
        return Outcome.forward(*outputs)
