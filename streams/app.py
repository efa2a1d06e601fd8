"""The Faust app: one agent per stage chain (``streams.chain``), a thin shell around pure stages.

The shell batches (``take_events``), runs each record through its chain, sends
every output and DLQ record through a librdkafka ``BatchProducer`` (one completion
per batch, no delivery report per record) and the table changelog records through
a ``DurableProducer`` (their offsets are Faust's recovery start; Faust's aiokafka
producer costs several times more CPU per record, ``streams.tables``), and waits for
their delivery before the batch is acknowledged, so an offset is never committed for
a record whose outputs are not durable (at-least-once; deterministic event ids make
repeats harmless downstream).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import faust
from faust.streams import _current_event
from faust.types import Message
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas import headers as H
from streams.batching import take_ready_batches
from streams.chain import Pending, StageChain
from streams.stage import InRecord
from streams.tables import ChangelogBuffer, buffered_table_class
from streams.transport import fetch_inbox, install_worker_transport
from topology.broker import fetch_wait_ms, is_embedded_broker
from topology.model import Topology
from topology.producer import BatchProducer, DurableProducer
from topology.settings import KafkaSettings

log = logging.getLogger(__name__)


class AgentBatchSettings(BaseSettings):
    """How an agent batches its input (``streams.batching.take_ready_batches``); env prefix ``CLINSTREAM_BATCH_``.

    A batch ends at ``size`` records, ``within_ms`` after its first record, or once no record was
    added for ``idle_ms`` (what was fetched is all in). The batch fills only while the agent waits,
    so under load a batch holds about ``within_ms`` worth of records, and every batch costs a
    produce request per output topic, an index flush and a commit. ``idle_ms`` is for the load
    below that: with Faust's ``take_events`` (``within_ms`` only) every batch waited the whole
    window; bench pipeline at 300 msg/s offered, 3 alternating rounds, p50/p99 137/296, 130/329,
    189/328 ms with ``idle_ms`` 5 against 163/360, 204/389, 236/412 ms without. Figures of the
    window itself, measured before ``idle_ms`` (bench pipeline, 2 alternating rounds, 10 vs 40 ms):
    15 vs 60 records per batch; 390-395 vs 450-468 msg/s; worker CPU 2.20-2.25 vs 1.96-2.04 ms/msg, broker
    0.64-0.67 vs 0.36-0.37; broker RSS 152-156 vs 111-114 MB (the embedded broker keeps every batch).
    The price is latency when idle: at 100 msg/s offered, p50 99 vs 121 ms, p99 215 vs 221 ms.

    Since agents take whole fetches (``inbox_records``, ``streams.transport``), the records that
    queued while a batch was processed are all there when it ends, so under load a batch is
    ``size`` records taken at once. ``size`` measured then (bench pipeline, one worker, 2 rounds
    each, 2026-12-04, machine partly busy): 100 / 250 / 500 gave 578, 639 / 704, 593 / 805, 657
    msg/s and peak RSS 365 / 383-386 / 380-397 MB.
    """

    model_config = SettingsConfigDict(env_prefix="CLINSTREAM_BATCH_", extra="ignore")

    size: int = Field(default=500, ge=1, le=100_000, description="records per batch at most")
    within_ms: int = Field(default=40, ge=1, le=60_000,
                           description="how long a batch waits to fill before the agent takes it")
    idle_ms: int = Field(default=5, ge=1, le=60_000,
                         description="a batch is taken once no record was added to it for this long")
    inbox_records: int = Field(default=1000, ge=1, le=1_000_000,
                               description="fetched records waiting for an agent at most (its fetch inbox), "
                                           "give or take one fetch")


def build_app(
    topology: Topology,
    settings: KafkaSettings,
    chains: Callable[[faust.App], Sequence[StageChain]],
    *,
    app_id: str = "clinstream-worker",
    changelog_prefix: str | None = None,
    data_dir: str | Path = "var/worker",
    store: str = "rocksdb://",
    batch: AgentBatchSettings | None = None,
    web_port: int | None = None,
    producer: BatchProducer | None = None,
    changelog_producer: DurableProducer | None = None,
) -> faust.App:
    """The Faust app with one agent per stage chain; outputs go through ``producer`` and table
    changelogs through ``changelog_producer`` (both librdkafka). Table changelog topics are
    prefixed ``changelog_prefix`` (default: ``app_id``, as Faust names them)."""
    producer = producer or BatchProducer(settings, linger_ms=5)
    changelog_producer = changelog_producer or DurableProducer(settings, linger_ms=5)
    batch = batch or AgentBatchSettings()
    outputs = InFlightOutputs(producer, changelog_producer)
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
        Table=buffered_table_class(outputs.changelog, changelog_prefix),  # changelogs go out with the outputs
    )
    outputs.gate_commits(app)
    install_worker_transport(app, fetch_wait_ms(settings))
    for chain in chains(app):
        _register(app, chain, outputs, batch)
    return app


def _reports_wrong_high_watermarks(settings: KafkaSettings) -> bool:
    """Tansu (the embedded broker) answers ListOffsets(latest) with the last batch's base offset + 1.

    Faust's recovery consistency check compares RocksDB's persisted changelog offset with that
    high watermark, so on Tansu it reports a healthy store as corrupt after any crash. The check
    is kept on for every other broker. (On Tansu, a worker that loses its data dir can also
    recover a table short of its last changelog batch: one more reason it is demo/test only.)
    """
    if is_embedded_broker(settings):
        log.warning("the broker is Tansu: Faust's recovery consistency check is off (wrong high watermarks); "
                    "demo/test only")
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
    stops and the uncommitted records are processed again on restart). Table
    changelog records queued in ``changelog`` (``streams.tables``) go out with them.
    """

    def __init__(self, producer: BatchProducer, changelog_producer: DurableProducer,
                 changelog: ChangelogBuffer | None = None, max_batches: int = 16) -> None:
        self.producer = producer
        # Table changelogs need each record's offset (Faust's recovery starts after the highest
        # durable one), so they go through the producer with a delivery report per record; they
        # are also the only records produced to an explicit partition, which librdkafka advises
        # not to mix with partitioner-placed records in one idempotent producer.
        self.changelog_producer = changelog_producer
        self.changelog = changelog or ChangelogBuffer()
        self.max_batches = max_batches
        self._inflight: list[asyncio.Future[None]] = []

    async def send(self, records: list[Pending]) -> None:
        changelog = self.changelog.take()
        if records:
            self._inflight.append(self.producer.send_batch(records))
        if changelog:
            delivered: dict[tuple[str, int], int] = {}
            fut = self.changelog_producer.send_batch((), changelog, delivered)
            fut.add_done_callback(self._mark_persisted_once_durable(delivered))
            self._inflight.append(fut)
        # keep memory bounded: past the limit, wait for the oldest batches
        while len(self._inflight) > self.max_batches:
            await self._inflight.pop(0)
        self._inflight = [f for f in self._inflight if not f.done() or f.exception() is not None]

    def _mark_persisted_once_durable(
        self, delivered: dict[tuple[str, int], int]
    ) -> Callable[[asyncio.Future[None]], None]:
        def done(fut: asyncio.Future[None]) -> None:
            if not fut.cancelled() and fut.exception() is None:
                self.changelog.mark_persisted(delivered)
        return done

    async def drain(self) -> None:
        await self.send([])  # table writes made outside a batch (none today) are not left behind
        pending, self._inflight = self._inflight, []
        if pending:
            await asyncio.gather(*pending)  # raises the first DeliveryError

    def gate_commits(self, app: faust.App) -> None:
        faust_flush = app.producer.flush

        async def flush_then_drain() -> None:
            await faust_flush()
            await self.drain()

        app.producer.flush = flush_then_drain  # type: ignore[method-assign]


def _register(app: faust.App, chain: StageChain, outputs: InFlightOutputs, batch: AgentBatchSettings) -> None:
    topic = app.topic(*chain.input_topics, key_type=bytes, value_type=bytes, value_serializer="raw",
                      key_serializer="raw")
    inbox = fetch_inbox(app, chain.input_topics, batch.inbox_records)  # whole fetches, not an event per record
    size, within, idle = batch.size, batch.within_ms / 1000, batch.idle_ms / 1000

    async def agent(stream: faust.StreamT[bytes]) -> None:
        async for messages in take_ready_batches(stream, inbox, size, within, idle):
            pending: list[Pending] = []
            started = time.perf_counter()
            for msg in messages:
                # Faust's "current event" routes table writes to the record's changelog partition.
                event = _RecordEvent(msg)
                _current_event.set(weakref.ref(event))
                chain.process(InRecord(
                    topic=msg.topic,
                    partition=msg.partition,
                    offset=msg.offset,
                    key=msg.key,
                    value=msg.value or b"",
                    headers=H.as_dict(msg.headers),
                    timestamp_ms=int(msg.timestamp * 1000) if msg.timestamp else None,
                ), pending)
            _current_event.set(None)
            chain.flush(pending)  # write-behind state (the MPI index) goes out with the batch
            # Outputs and dead letters stay in flight; commits wait for them (InFlightOutputs).
            await outputs.send(pending)  # then take_ready_batches acks the batch
            log.debug("%s: batch of %d in %.1f ms", chain.name, len(messages), (time.perf_counter() - started) * 1e3)

    agent.__name__ = f"{chain.name}_agent"
    app.agent(topic, name=chain.name)(agent)


class _RecordEvent:
    """What a table write reads of Faust's current event: the record being processed."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, message: Message) -> None:
        self.message = message
