"""The Faust app: one agent per stage, each a thin shell around a pure ``Stage``.

The shell batches (``take_events``), calls ``stage.process`` per record, sends
every output and DLQ record through one librdkafka producer (Faust's aiokafka
producer costs several times more CPU per record; it still carries the table
changelogs), and waits for their delivery before the batch is acknowledged,
so an offset is never committed for a record whose outputs are not durable
(at-least-once; deterministic event ids make repeats harmless downstream).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import faust
from faust.streams import _current_event

from schemas import headers as H
from schemas import metrics
from streams.stage import InRecord, Outcome, Output
from topology.model import Topology
from topology.producer import DurableProducer
from topology.settings import KafkaSettings

log = logging.getLogger(__name__)


class Stage(Protocol):
    name: str
    input_topics: Sequence[str]

    def process(self, record: InRecord) -> Outcome: ...


def build_app(
    topology: Topology,
    settings: KafkaSettings,
    stages: Callable[[faust.App], Sequence[Stage]],
    *,
    app_id: str = "clinstream-worker",
    data_dir: str | Path = "var/worker",
    store: str = "rocksdb://",
    batch_size: int = 500,
    batch_within_s: float = 0.01,
    web_port: int | None = None,
    producer: DurableProducer | None = None,
) -> faust.App:
    """The Faust app with one agent per stage; stage outputs go through ``producer`` (librdkafka)."""
    producer = producer or DurableProducer(settings, linger_ms=5)
    app = faust.App(
        app_id,
        recovery_consistency_check=not _reports_wrong_high_watermarks(settings),
        **settings.faust_broker_kwargs(),
        store=store,
        datadir=str(data_dir),
        topic_partitions=topology.topic_defaults.partitions,
        topic_replication_factor=topology.topic_defaults.replication_factor,
        topic_allow_declare=True,  # changelog topics of the state tables
        topic_disable_leader=True,
        producer_acks=-1,
        producer_linger_ms=2,
        producer_max_batch_size=1_048_576,
        consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=8192,
        broker_commit_every=5000,
        broker_commit_interval=1.0,
        web_enabled=web_port is not None,
        web_port=web_port or 6066,
        web_bind="0.0.0.0",  # probes and scrapes come from the pod network
    )
    outputs = InFlightOutputs(producer)
    outputs.gate_commits(app)
    for stage in stages(app):
        _register(app, stage, outputs, batch_size, batch_within_s)
    return app


def _reports_wrong_high_watermarks(settings: KafkaSettings) -> bool:
    """Tansu (the embedded broker) answers ListOffsets(latest) with the last batch's base offset + 1.

    Faust's recovery consistency check compares RocksDB's persisted changelog offset with that
    high watermark, so on Tansu it reports a healthy store as corrupt after any crash. The check
    is kept on for every other broker. (On Tansu, a worker that loses its data dir can also
    recover a table short of its last changelog batch: one more reason it is demo/test only.)
    """
    from confluent_kafka.admin import AdminClient

    try:
        cluster_id = AdminClient(settings.librdkafka()).list_topics(timeout=10).cluster_id or ""
    except Exception:  # unreachable now: keep Faust's default (the check on)
        return False
    if cluster_id.startswith("tansu"):
        log.warning("broker cluster %r is Tansu: Faust's recovery consistency check is off (wrong high "
                    "watermarks); demo/test only", cluster_id)
        return True
    return False


class InFlightOutputs:
    """Stage outputs in flight, and the gate that keeps offset commits behind them.

    Awaiting each batch's delivery before taking the next batch serialises every
    stage on broker round trips (tiny batches, ~10 ms each). Instead a batch's
    outputs stay in flight while the next batch is processed, and Faust's commit
    path (which flushes its own producer before committing offsets) is made to wait
    for them too: an offset is still never committed before the outputs of the
    records below it are durable. A failed delivery fails the commit (the worker
    stops and the uncommitted records are processed again on restart).
    """

    def __init__(self, producer: DurableProducer, max_batches: int = 16) -> None:
        self.producer = producer
        self.max_batches = max_batches
        self._inflight: list[asyncio.Future[None]] = []

    async def send(self, records: list[tuple[str, bytes | None, bytes, Sequence[tuple[str, bytes]]]]) -> None:
        if records:
            self._inflight.append(self.producer.send_batch(records))
        # keep memory bounded: past the limit, wait for the oldest batches
        while len(self._inflight) > self.max_batches:
            await self._inflight.pop(0)
        self._inflight = [f for f in self._inflight if not f.done() or f.exception() is not None]

    async def drain(self) -> None:
        pending, self._inflight = self._inflight, []
        if pending:
            await asyncio.gather(*pending)  # raises the first DeliveryError

    def gate_commits(self, app: faust.App) -> None:
        # Faust's producer (table changelogs) makes streams wait whenever more than 100 records are
        # buffered ("producer buffer full"): with several index writes per event that throttled the
        # worker a thousand times a minute. Commits still flush it, so a larger buffer loses nothing.
        app.producer.buffer.max_messages = 20_000
        faust_flush = app.producer.flush

        async def flush_then_drain() -> None:
            await faust_flush()
            await self.drain()

        app.producer.flush = flush_then_drain  # type: ignore[method-assign]


def _register(app: faust.App, stage: Stage, outputs: InFlightOutputs, batch_size: int, within: float) -> None:
    topic = app.topic(*stage.input_topics, key_type=bytes, value_type=bytes, value_serializer="raw",
                      key_serializer="raw")
    dlq_topic = f"dlq.{stage.name}"
    m = metrics.stage(stage.name)

    async def agent(stream: faust.StreamT[bytes]) -> None:
        flush = getattr(stage, "flush", None)
        async for events in stream.take_events(batch_size, within=within):
            pending: list[tuple[str, bytes | None, bytes, Sequence[tuple[str, bytes]]]] = []
            started = time.perf_counter()
            for event in events:
                # take_events buffers a batch; point Faust's "current event" at the record being processed
                # so table writes go to that record's changelog partition (and windows use its time).
                _current_event.set(weakref.ref(event))
                msg = event.message
                record = InRecord(
                    topic=msg.topic,
                    partition=msg.partition,
                    offset=msg.offset,
                    key=msg.key,
                    value=msg.value or b"",
                    headers=H.as_dict(msg.headers),
                    timestamp_ms=int(msg.timestamp * 1000) if msg.timestamp else None,
                )
                m.records_in(record.headers.get(H.SOURCE, "-"))
                t0 = time.perf_counter()
                try:
                    outcome = stage.process(record)
                except Exception as exc:  # never let one record crash the worker: dead-letter it
                    log.warning("%s: %s at %s[%d]@%d", stage.name, type(exc).__name__, msg.topic,
                                msg.partition, msg.offset)
                    outcome = Outcome.dead_letter(exc)
                m.observe_seconds(time.perf_counter() - t0)
                for out in outcome.outputs:
                    pending.append((out.topic, out.key, out.value, out.headers))
                    m.records_out(out.topic)
                if outcome.dropped:
                    m.dropped(outcome.dropped)
                if outcome.error is not None:
                    m.dlq(type(outcome.error).__name__)
                    dl = _dead_letter(stage.name, dlq_topic, record, outcome.error)
                    pending.append((dl.topic, dl.key, dl.value, dl.headers))
            if flush is not None:
                flush()  # write-behind state (e.g. the MPI index) goes out with the batch
            # Outputs and dead letters stay in flight; commits wait for them (InFlightOutputs).
            await outputs.send(pending)
            log.debug("%s: batch of %d in %.1f ms", stage.name, len(events), (time.perf_counter() - started) * 1e3)

    agent.__name__ = f"{stage.name}_agent"
    app.agent(topic, name=stage.name)(agent)


def _dead_letter(stage: str, dlq_topic: str, record: InRecord, error: BaseException) -> Output:
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
