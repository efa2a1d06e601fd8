"""The route stage: ``identified.events`` -> ``dest.<destination>`` (+ ``audit.disclosures``).

For every destination in the topology the compiled plan decides (event-type
filter, consent for the destination's purpose), projects to the allow-list and
applies the transforms; each delivery is recorded as a disclosure. Consent
state per EUID comes from an injected mapping (a Faust table in the worker, a
dict in tests).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from schemas import headers as H
from schemas.envelope import decode_event, encode_event
from streams.route.plan import Delivered, DestinationPlan, compile_destination, load_keys
from streams.stage import InRecord, Outcome, Output
from topology.model import AUDIT, IDENTIFIED, Topology


@dataclass
class RouteStage:
    plans: Sequence[DestinationPlan]
    input_topics: Sequence[str] = (IDENTIFIED,)
    consent: MutableMapping[str, Any] = field(default_factory=dict)
    name: str = "route"
    denied: Counter[tuple[str, str]] = field(default_factory=Counter)

    @classmethod
    def from_topology(cls, topology: Topology, input_topic: str = IDENTIFIED,
                      consent: MutableMapping[str, Any] | None = None) -> RouteStage:
        keys = load_keys(topology)
        plans = [compile_destination(d, keys=keys) for d in topology.destinations]
        return cls(plans=plans, input_topics=(input_topic,), consent=consent if consent is not None else {})

    def process(self, record: InRecord) -> Outcome:
        event = decode_event(record.value)
        euid = event["patient"].get("euid")
        consent_state = self.consent.get(euid) if euid else None
        key = (euid or "").encode() or record.key
        trace = record.headers.get(H.TRACEPARENT, "")
        outputs: list[Output] = []
        for plan in self.plans:
            decision = plan.apply(event, consent_state)
            if not isinstance(decision, Delivered):
                self.denied[(plan.name, decision.reason)] += 1
                continue
            hdrs = H.encode([(H.EVENT_ID, event["event_id"]), (H.SOURCE, event["source"]),
                             (H.TRACEPARENT, trace), (H.RECEIVED_AT, event["received_at"])])
            outputs.append(Output(plan.topic, encode_event(decision.event), key, hdrs))
            outputs.append(Output(AUDIT, orjson.dumps(decision.disclosure), key, hdrs))
        if not outputs:
            return Outcome.drop("no-destination")
        return Outcome.forward(*outputs)
