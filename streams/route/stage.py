"""The route stage shell: ``identified.events`` -> ``dest.<destination>`` + ``audit.disclosures``.

For every destination the compiled plan decides (event-type filter, consent for
the destination's purpose), projects to the allow-list and applies transforms;
each delivery is recorded as a disclosure on ``audit.disclosures``. FHIR
``Consent`` resources passing through update the patient's consent state
(kept per EUID in an injected mapping: a Faust table in the worker, changelogged
and co-partitioned with the EUID-keyed input; a dict in tests) before the event
itself is routed, so a consent takes effect for everything after it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from schemas import headers as H
from schemas.envelope import decode_event, encode_event
from streams.route.consent import ConsentState
from streams.route.plan import Delivered, DestinationPlan, compile_topology
from streams.stage import InRecord, Outcome, Output
from topology.model import AUDIT, CONSENT, IDENTIFIED, Topology


@dataclass
class RouteStage:
    plans: Sequence[DestinationPlan]
    input_topics: Sequence[str] = (IDENTIFIED,)
    consent: MutableMapping[str, str] = field(default_factory=dict)
    name: str = "route"
    denied: Counter[tuple[str, str]] = field(default_factory=Counter)
    _cache: dict[str, tuple[str, ConsentState]] = field(default_factory=dict)

    @classmethod
    def from_topology(cls, topology: Topology, input_topic: str = IDENTIFIED,
                      consent: MutableMapping[str, str] | None = None) -> RouteStage:
        plans = compile_topology(topology.destinations)
        return cls(plans=plans, input_topics=(input_topic,), consent=consent if consent is not None else {})

    def consent_state(self, euid: str | None) -> ConsentState | None:
        if not euid:
            return None
        stored = self.consent.get(euid)
        if stored is None:
            return None
        cached = self._cache.get(euid)
        if cached is not None and cached[0] is stored:
            return cached[1]
        state = ConsentState.from_json(stored)
        self._cache[euid] = (stored, state)
        return state

    def _update_consent(self, euid: str, consents: list[dict[str, Any]]) -> tuple[str, bytes]:
        state = self.consent_state(euid) or ConsentState.from_consents(())
        for resource in consents:
            state = state.with_consent(resource)
        stored = state.to_json()
        self.consent[euid] = stored
        self._cache[euid] = (stored, state)
        return euid, stored.encode()

    def process(self, record: InRecord) -> Outcome:
        event = decode_event(record.value)
        euid = event["patient"].get("euid")
        key = euid.encode() if euid else record.key
        outputs: list[Output] = []
        consents = [r for r in event["resources"] if r.get("resourceType") == "Consent"]
        if consents and euid:
            _, state_bytes = self._update_consent(euid, consents)
            outputs.append(Output(CONSENT, state_bytes, key, H.encode([(H.EVENT_ID, event["event_id"])])))
        consent_state = self.consent_state(euid)
        hdrs = H.encode([
            (H.EVENT_ID, event["event_id"]),
            (H.SOURCE, event["source"]),
            (H.TRACEPARENT, record.headers.get(H.TRACEPARENT, "")),
            (H.RECEIVED_AT, event["received_at"]),
        ])
        for plan in self.plans:
            decision = plan.apply(event, consent_state)
            if not isinstance(decision, Delivered):
                self.denied[(plan.name, decision.reason)] += 1
                continue
            outputs.append(Output(plan.topic, encode_event(decision.event), key, hdrs))
            outputs.append(Output(AUDIT, orjson.dumps(decision.disclosure), key, hdrs))
        if not outputs:
            return Outcome.drop("no-destination")
        return Outcome.forward(*outputs)
