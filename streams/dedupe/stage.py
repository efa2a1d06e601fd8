"""The dedupe stage shell: ``canonical.events`` -> ``dedup.events``.

State lives in an injected mapping: a Faust table in the worker (changelogged,
RocksDB-backed, co-partitioned with ``canonical.events``, which is keyed by the
source patient id — so every resend of a message lands on the same partition as
its first copy), a dict in tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass

from schemas import headers as H
from schemas.envelope import encode_event, restamped_headers
from streams.dedupe.logic import decide
from streams.stage import InRecord, Outcome, Output, event_of
from topology.model import CANONICAL, DEDUPED

FLAG_HEADER = "clinstream-dedupe-flag"


@dataclass
class DedupeStage:
    seen: MutableMapping[str, str]
    window_s: float = 7 * 24 * 3600.0
    input_topics: Sequence[str] = (CANONICAL,)
    output_topic: str = DEDUPED
    name: str = "dedupe"
    clock: Callable[[], float] = time.time

    def process(self, record: InRecord) -> Outcome:
        event = event_of(record)
        decision = decide(event, self.seen, self.clock(), self.window_s)
        # A redrive is an operator's explicit "process this again" (the record was dead-lettered after
        # dedupe had seen it, e.g. by identity): forwarded and flagged; downstream is idempotent by event id.
        seen_before = decision.action == "drop"
        if seen_before and H.REDRIVE_COUNT not in record.headers:
            return Outcome.drop(decision.reason)
        event["lineage"]["stages"] = [*event["lineage"]["stages"], "dedupe"]
        pairs = restamped_headers(record.headers, drop=(FLAG_HEADER,))
        if seen_before:  # only a redrive gets here
            pairs.append((FLAG_HEADER, "redriven"))
        elif decision.flagged:
            pairs.append((FLAG_HEADER, decision.reason))
        return Outcome.forward(Output(self.output_topic, encode_event(event), record.key, H.encode(pairs), event))
