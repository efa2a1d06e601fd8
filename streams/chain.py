"""Stages run back to back in one agent, handing events over in memory.

One agent per stage costs a Kafka round trip, a Faust event lifecycle and an
envelope decode per stage per event; on two cores that, not the logic, capped the
pipeline (closing notes of issue 6). A ``StageChain`` runs several stages on one
consumed record: every output whose topic a *later* stage of the chain reads is
handed to that stage at once (with its decoded envelope, ``Output.event``), and is
still written to its topic, so ``canonical.events`` and ``dedup.events`` stay what
DESIGN §3 says they are (replay sources, public to the platform team).

Stages chain only where they are co-partitioned: normalize, dedupe and identity
all key by the source patient id (the dedupe table is partitioned like the raw
topic; the MPI index is whole on every worker, ``streams.replicated_store``). ``route`` reads
``identified.events`` keyed by EUID (consent state is co-partitioned with it), so
it runs as a chain of its own.

Accounting stays per stage: each inner stage counts its own records in/out,
drops and dead letters. A dead letter of an inner stage carries the *consumed*
record (the original bytes and their topic/partition/offset, DESIGN §5), so a
redrive re-enters the chain at its start; dedupe lets redriven records through.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Protocol

from schemas import headers as H
from schemas import metrics
from streams.stage import InRecord, Outcome, Output

log = logging.getLogger(__name__)

Pending = tuple[str, bytes | None, bytes | None, Sequence[tuple[str, bytes]]]  # topic, key, value, headers


class Stage(Protocol):
    name: str
    input_topics: Sequence[str]

    def process(self, record: InRecord) -> Outcome: ...


class StageRunner:
    """One stage's per-record accounting: metrics, exceptions turned into dead letters.

    Records in and out are counted per batch and added to their Prometheus counters at the
    batch's end (``publish_counts``, from ``StageChain.flush``): a counter increment takes a
    lock, and with a dozen per event they were ~1.5% of the worker."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.dlq_topic = f"dlq.{stage.name}"
        self.metrics = metrics.stage(stage.name)
        self._in: dict[str, int] = {}
        self._out: dict[str, int] = {}

    def run(self, record: InRecord, origin: InRecord, pending: list[Pending]) -> Outcome:
        """Process ``record``; its outputs and any dead letter (of ``origin``) go to ``pending``."""
        m = self.metrics
        source = record.headers.get(H.SOURCE, "-")
        counts = self._in
        counts[source] = counts.get(source, 0) + 1
        t0 = time.perf_counter()
        try:
            outcome = self.stage.process(record)
        except Exception as exc:  # never let one record crash the worker: dead-letter it
            log.warning("%s: %s at %s[%d]@%d", self.stage.name, type(exc).__name__, origin.topic,
                        origin.partition, origin.offset)
            outcome = Outcome.dead_letter(exc)
        m.observe_seconds(time.perf_counter() - t0)
        counts = self._out
        for out in outcome.outputs:
            pending.append(_pending(out))
            counts[out.topic] = counts.get(out.topic, 0) + 1
        if outcome.dropped:
            m.dropped(outcome.dropped)
        if outcome.error is not None:
            m.dlq(type(outcome.error).__name__)
            pending.append(_pending(dead_letter(self.stage.name, self.dlq_topic, origin, outcome.error)))
        return outcome

    def publish_counts(self) -> None:
        """Add the records counted since the last call to the stage's counters."""
        m = self.metrics
        for source, n in self._in.items():
            m.records_in(source, n)
        for topic, n in self._out.items():
            m.records_out(topic, n)
        self._in.clear()
        self._out.clear()


class StageChain:
    """Stages in order; a record enters at the first stage that reads its topic."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        if not stages:
            raise ValueError("a stage chain needs at least one stage")
        self.runners = [StageRunner(s) for s in stages]
        self.name = stages[0].name if len(stages) == 1 else "+".join(s.name for s in stages)
        # A topic one stage writes and a later one reads is handed over in memory, never consumed.
        produced: set[str] = set()
        inputs: list[str] = []
        for stage in stages:
            inputs += [t for t in stage.input_topics if t not in produced and t not in inputs]
            produced |= set(_output_topics(stage))
        self.input_topics: tuple[str, ...] = tuple(inputs)
        self._entry = {t: i for i in reversed(range(len(stages))) for t in stages[i].input_topics}

    @property
    def stages(self) -> list[Stage]:
        return [r.stage for r in self.runners]

    def process(self, record: InRecord, pending: list[Pending]) -> None:
        """Run ``record`` through the chain; every output and dead letter is appended to ``pending``."""
        start = self._entry.get(record.topic)
        if start is None:
            raise ValueError(f"no stage of {self.name} reads {record.topic}")
        self._run(start, record, record, pending)

    def _run(self, index: int, record: InRecord, origin: InRecord, pending: list[Pending]) -> None:
        outcome = self.runners[index].run(record, origin, pending)
        for out in outcome.outputs:
            nxt = self._next_reader(index, out.topic)
            if nxt is not None:
                self._run(nxt, handed_over(out, origin), origin, pending)

    def _next_reader(self, index: int, topic: str) -> int | None:
        for j in range(index + 1, len(self.runners)):
            if topic in self.runners[j].stage.input_topics:
                return j
        return None

    def flush(self, pending: list[Pending]) -> None:
        """End of batch: stages with write-behind state (the MPI index) write it out now; the
        records that replicate it are appended to ``pending``, to go out with the batch. The
        batch's record counts go to the stage metrics."""
        for runner in self.runners:
            flush = getattr(runner.stage, "flush", None)
            if flush is not None:
                pending.extend(_pending(o) for o in flush() or ())
            runner.publish_counts()


def _pending(out: Output) -> Pending:
    return (out.topic, out.key, out.value, out.headers)


def _output_topics(stage: Stage) -> Sequence[str]:
    out = getattr(stage, "output_topic", None)
    return (out,) if isinstance(out, str) else ()


def handed_over(out: Output, origin: InRecord) -> InRecord:
    """The in-memory record the next stage sees: as if consumed from ``out.topic`` on origin's partition."""
    return InRecord(
        topic=out.topic,
        partition=origin.partition,
        offset=origin.offset,
        key=out.key,
        value=out.value or b"",
        headers=H.as_dict(out.headers),
        timestamp_ms=origin.timestamp_ms,
        event=out.event,
    )


def dead_letter(stage: str, dlq_topic: str, record: InRecord, error: BaseException) -> Output:
    return Output(
        topic=dlq_topic,
        key=record.key,
        value=record.value,
        headers=H.dlq_headers(
            stage=stage,
            error=error,
            origin_topic=record.topic,
            origin_partition=record.partition,
            origin_offset=record.offset,
            source=record.headers.get(H.SOURCE),
            event_id=record.headers.get(H.EVENT_ID),
        ),
    )
