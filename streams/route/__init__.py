"""Pure logic of the ``route`` stage: policies, projection, transforms, consent, disclosure log, triggers.

The Faust agent calls ``compile_destination`` once per destination and ``plan.apply(event, consent)``
per event; nothing in this package touches Kafka.
"""

from streams.route.consent import ConsentDecision, ConsentState, evaluate
from streams.route.errors import ConsentError, PreviewInputError, RouteError, RoutePolicyError, TriggerError
from streams.route.plan import Delivered, Denied, DestinationPlan, RouteDecision, compile_destination, compile_topology

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
    "compile_destination",
    "compile_topology",
    "evaluate",
]
