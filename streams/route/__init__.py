"""Pure logic of the ``route`` stage: policies, projection, transforms, consent, disclosure log, triggers.

How the Faust ``route`` agent uses it (nothing in this package touches Kafka):

- at start-up: ``plans = compile_topology(topology.destinations)`` (keys come from each transform's
  ``key_env`` environment variable; a missing key raises ``RoutePolicyError``) and
  ``triggers = compile_triggers(topology.triggers)``;
- per event: ``state = update_from_event(consent_state, event)`` stores new Consents for the EUID
  (``state.to_json()`` into the table / ``consent.decisions``); then for each plan
  ``decision = plan.apply(event, consent_state)``: on ``Delivered`` write ``decision.event`` to
  ``plan.topic`` keyed by ``decision.event["patient"]["euid"]`` (already pseudonymised or None for
  de-identified destinations: never key by the input EUID there) and ``decision.disclosure`` to
  ``audit.disclosures``; on ``Denied`` count ``decision.reason``;
- ``triggers.evaluate(event)`` -> ``TriggeredTask(queue, topic, key, task)`` to write to ``task.topic``.

Outputs share unchanged sub-objects with the input event and with each other: serialise, don't mutate.
"""

from streams.route.consent import ConsentDecision, ConsentState, evaluate, update_from_event
from streams.route.errors import ConsentError, PreviewInputError, RouteError, RoutePolicyError, TriggerError
from streams.route.plan import (
    Delivered,
    Denied,
    DestinationPlan,
    RouteDecision,
    compile_destination,
    compile_topology,
    load_keys,
)
from streams.route.triggers import TriggeredTask, TriggerSet, compile_triggers

__all__ = [
    "ConsentDecision",
    "ConsentError",
    "ConsentState",
    "Delivered",
    "Denied",
    "DestinationPlan",
    "PreviewInputError",
    "RouteDecision",
    "RouteError",
    "RoutePolicyError",
    "TriggerError",
    "TriggerSet",
    "TriggeredTask",
    "compile_destination",
    "compile_topology",
    "compile_triggers",
    "evaluate",
    "load_keys",
    "update_from_event",
]
