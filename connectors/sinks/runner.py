"""SinkRunner: the thin Kafka shell around a sink.

One confluent-kafka consumer on ``dest.<destination>`` (manual commits,
``read_committed``). On assignment every partition is seeked to the offset stored
*in the target* (``Sink.committed_offsets``), not to the group's: the group offset is
committed after each write only so lag dashboards work.

Per poll: decode, group per partition, ``sink.write`` (atomic with offsets for
transactional sinks). Outcomes:

- undecodable records and records the sink rejects (``SinkRejected``) go to
  ``dlq.sink`` with origin headers; the DLQ produce is flushed *before* the offset
  moves past them, so nothing is lost;
- ``SinkRetryable``: exponential backoff with full jitter, same batch again, no commit;
- ``SinkOffsetsMoved``: another writer fenced us; re-seek to the target's offsets.

``python -m connectors.sinks.runner --topology FILE --destination NAME`` runs one.
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from connectors.sinks.base import Sink, SinkBatch, SinkRecord
from connectors.sinks.errors import SinkError, SinkOffsetsMoved, SinkRejected, SinkRetryable
from connectors.sinks.registry import create_sink
from schemas import metrics
from schemas.envelope import EnvelopeError, decode_event
from schemas.headers import SCHEMA_FINGERPRINT, as_dict, dlq_headers
from topology.broker import fetch_wait_config
from topology.health import HealthServer, OpsSettings, broker_check
from topology.model import Topology, load_topology
from topology.settings import KafkaSettings

log = logging.getLogger(__name__)

DLQ_TOPIC = "dlq.sink"
DLQ_STAGE = "sink"
_ORIGIN_HEADERS = frozenset({"error-stage", "error-class", "error-message", "origin-topic", "origin-partition",
                             "origin-offset"})


@dataclass
class RunnerStats:
    delivered: int = 0
    dlq: int = 0
    batches: int = 0
    retries: int = 0
    reseeks: int = 0
    last_error: str | None = None
    started_at: float = field(default_factory=time.monotonic)

    def summary(self) -> dict[str, Any]:
        return {
            "delivered": self.delivered, "dlq": self.dlq, "batches": self.batches, "retries": self.retries,
            "reseeks": self.reseeks, "last_error": self.last_error,
            "uptime_s": round(time.monotonic() - self.started_at, 1),
        }


@dataclass
class _Polled:
    """One partition's slice of a poll: decoded records plus the raw messages (for the DLQ)."""

    partition: int
    records: list[SinkRecord] = field(default_factory=list)
    raw: dict[int, Message] = field(default_factory=dict)
    undecodable: list[tuple[Message, Exception]] = field(default_factory=list)
    next_offset: int = -1


class SinkRunner:
    """Consume ``topic`` and deliver it through ``sink`` until ``stop_event`` is set."""

    def __init__(
        self,
        sink: Sink,
        *,
        topic: str,
        settings: KafkaSettings,
        group_id: str | None = None,
        batch_size: int = 2000,
        poll_timeout_s: float = 0.5,
        commit_to_kafka: bool = True,
        lag_commit_interval_s: float = 1.0,
        dlq_topic: str = DLQ_TOPIC,
        initial_backoff_s: float = 0.2,
        max_backoff_s: float = 30.0,
        consumer_config: dict[str, Any] | None = None,
    ) -> None:
        self.sink = sink
        self.topic = topic
        self.settings = settings
        self.group_id = group_id or f"clinstream-sink-{sink.destination}"
        self.batch_size = batch_size
        self.poll_timeout_s = poll_timeout_s
        self.commit_to_kafka = commit_to_kafka
        if lag_commit_interval_s < 0:
            raise ValueError(f"lag_commit_interval_s must be >= 0, got {lag_commit_interval_s}")
        self.lag_commit_interval_s = lag_commit_interval_s
        self._lag_offsets: dict[int, int] = {}  # delivered, not yet mirrored to the group
        self._lag_committed_at = 0.0
        self.dlq_topic = dlq_topic
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.consumer_config = dict(consumer_config or {})
        self.stats = RunnerStats()
        self.metrics = metrics.sink(sink.destination)
        self.running = False
        self.stop_event = threading.Event()
        self.assigned: set[int] = set()
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._dlq_errors: list[str] = []
        self._dlq_failed: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
        self._rng = random.Random()

    # --- lifecycle ---------------------------------------------------------------------------
    def _make_consumer(self) -> Consumer:
        conf = self.settings.librdkafka(**{
            "group.id": self.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": self.settings.session_timeout_ms,
            "heartbeat.interval.ms": max(self.settings.session_timeout_ms // 4, 500),
            "enable.partition.eof": False,
            # librdkafka prefetches up to 64 MB by default; a sink writes batches of a few MB, and
            # a sink per destination should not each hold that much (bench pipeline RSS)
            "queued.max.messages.kbytes": 16384,
            **fetch_wait_config(self.settings),
            **self.consumer_config,
        })
        return Consumer(conf)

    def _make_producer(self) -> Producer:
        return Producer(self.settings.librdkafka_producer(**{
            "linger.ms": 5, "client.id": f"{self.settings.client_id}-sink-dlq",
        }))

    def stop(self) -> None:
        self.stop_event.set()

    def health(self) -> dict[str, Any]:
        return {"topic": self.topic, "group": self.group_id, "assigned": sorted(self.assigned),
                **self.stats.summary(), "sink": self.sink.health()}

    def run(self, stop_event: threading.Event | None = None) -> RunnerStats:
        """Blocking loop; returns the stats when ``stop_event`` (or :meth:`stop`) fires."""
        stop = stop_event or self.stop_event
        if stop_event is not None:
            self.stop_event = stop_event
        self.sink.start()
        self._producer = self._make_producer()
        self._consumer = self._make_consumer()
        self._consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        log.info("sink %s (%s) consuming %s as group %s", self.sink.destination, self.sink.kind, self.topic,
                 self.group_id)
        self.running = True
        try:
            while not stop.is_set():
                msgs = self._next_batch()
                if msgs:
                    self._handle(msgs, stop)
        finally:
            self.running = False
            self._shutdown()
        log.info("sink %s stopped: %s", self.sink.destination, self.stats.summary())
        return self.stats

    def _next_batch(self) -> list[Message]:
        """What is prefetched now (up to batch_size); if nothing, wait up to poll_timeout_s for the first.

        ``consume(n, timeout)`` returns early only once n records are there, so at a low rate every
        batch waited the whole timeout (half a second of end-to-end latency); under load the
        prefetch queue is full and batches stay large.
        """
        consume = self._consumer.consume
        msgs = consume(num_messages=self.batch_size, timeout=0)
        if not msgs:
            msgs = consume(num_messages=1, timeout=self.poll_timeout_s)
            if msgs:
                msgs += consume(num_messages=self.batch_size - 1, timeout=0)
        return msgs

    def _shutdown(self) -> None:
        if self._consumer is not None:
            self._commit_lag_offsets(asynchronous=False)
            try:
                self._consumer.close()  # leaves the group so a restart does not wait for a session timeout
            except KafkaException as exc:
                log.warning("consumer close failed: %s", exc)
            self._consumer = None
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None
        self.sink.stop()

    # --- rebalance ---------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        parts = [tp.partition for tp in partitions]
        stored = self._stored_offsets(parts)
        for tp in partitions:
            if tp.partition in stored:
                tp.offset = stored[tp.partition]
            elif self.sink.stores_offsets:
                # Nothing in the target yet: nothing was delivered, start from the beginning
                # whatever the group says.
                tp.offset = OFFSET_BEGINNING
        consumer.assign(partitions)
        self.assigned = set(parts)
        log.info("sink %s assigned %s partitions %s (resume offsets from target: %s)", self.sink.destination,
                 self.topic, parts, stored)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Writes are synchronous inside the poll loop, so nothing is in flight here.
        revoked = {tp.partition for tp in partitions}
        self._commit_lag_offsets(asynchronous=True, partitions=revoked)  # while they are still ours
        self.assigned -= revoked
        for p in revoked:
            self._lag_offsets.pop(p, None)
        consumer.unassign()

    def _stored_offsets(self, partitions: list[int]) -> dict[int, int]:
        attempt = 0
        while True:
            try:
                return self.sink.committed_offsets(self.topic, partitions)
            except SinkRetryable as exc:
                # Inside a rebalance callback: keep trying (bounded by stop); a wrong guess would duplicate.
                attempt += 1
                self.stats.retries += 1
                self.stats.last_error = str(exc)
                if self.stop_event.is_set() and attempt > 3:
                    raise
                self._sleep_backoff(attempt, self.stop_event)

    # --- one poll ----------------------------------------------------------------------------
    def _group(self, msgs: list[Message]) -> list[_Polled]:
        by_part: dict[int, _Polled] = {}
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error on %s: %s", self.topic, err)
                continue
            part, offset = msg.partition(), msg.offset()
            polled = by_part.setdefault(part, _Polled(part))
            polled.next_offset = offset + 1
            headers = as_dict(msg.headers())
            try:
                event = decode_event(msg.value() or b"", headers.get(SCHEMA_FINGERPRINT))
            except EnvelopeError as exc:
                polled.undecodable.append((msg, exc))
                continue
            polled.records.append(SinkRecord(offset, msg.key(), event, headers))
            polled.raw[offset] = msg
        return [p for p in by_part.values() if p.next_offset >= 0]

    def _handle(self, msgs: list[Message], stop: threading.Event) -> None:
        polled = self._group(msgs)
        if not polled:
            return
        bad = [(m, e) for p in polled for m, e in p.undecodable]
        if bad:
            self._to_dlq(bad)  # flushed before the write below moves the offsets past them
        batches = [SinkBatch(self.topic, p.partition, p.records, p.next_offset) for p in polled]
        raw = {(p.partition, off): m for p in polled for off, m in p.raw.items()}
        delivered = self._deliver(batches, raw, stop)
        if delivered is None:
            return
        self.stats.batches += 1
        self.stats.delivered += delivered
        self.metrics.delivered_batch([r.event.get("received_at") for b in batches for r in b.records])
        if self._consumer is None:
            return
        if not self.sink.stores_offsets:
            # For idempotent sinks the group offset IS the resume point: every batch, synchronously.
            # A failed commit costs at worst a replay of idempotent writes after a restart.
            self._group_commit([TopicPartition(self.topic, b.partition, b.next_offset) for b in batches],
                               asynchronous=False)
        elif self.commit_to_kafka:
            # Sinks storing offsets in the target mirror them to the group only for lag dashboards:
            # at most once per interval (at a low rate every small batch was a commit request).
            for b in batches:
                self._lag_offsets[b.partition] = b.next_offset
            if time.monotonic() - self._lag_committed_at >= self.lag_commit_interval_s:
                self._commit_lag_offsets(asynchronous=True)

    def _commit_lag_offsets(self, *, asynchronous: bool, partitions: set[int] | None = None) -> None:
        owned = self.assigned if partitions is None else partitions & self.assigned
        offsets = [TopicPartition(self.topic, p, o) for p, o in self._lag_offsets.items() if p in owned]
        for tp in offsets:
            del self._lag_offsets[tp.partition]
        self._lag_committed_at = time.monotonic()
        if offsets:  # a failed one only makes a dashboard lag a little: the target holds the real offsets
            self._group_commit(offsets, asynchronous=asynchronous)

    def _group_commit(self, offsets: list[TopicPartition], *, asynchronous: bool) -> None:
        if self._consumer is None:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=asynchronous)
        except KafkaException as exc:
            log.warning("group commit failed: %s", exc)

    def _deliver(self, batches: list[SinkBatch], raw: dict[tuple[int, int], Message],
                 stop: threading.Event) -> int | None:
        """Write with retries; returns records delivered, or None if the batch was abandoned
        (stopping, or fenced and re-seeked)."""
        attempt = 0
        while True:
            try:
                self.sink.write(batches)
                return sum(len(b.records) for b in batches)
            except SinkOffsetsMoved as exc:
                self.stats.reseeks += 1
                self.stats.last_error = str(exc)
                log.warning("sink %s: %s", self.sink.destination, exc)
                # The whole write was rolled back, so every partition in it goes back to the target's offsets.
                self._reseek(sorted({b.partition for b in batches} | set(exc.partitions)))
                return None
            except SinkRejected as exc:
                return self._deliver_rejecting(batches, raw, exc, stop)
            except SinkRetryable as exc:
                self.stats.last_error = str(exc)
            except SinkError:
                raise
            except Exception as exc:  # an unclassified failure: retry rather than lose or skip data
                log.exception("sink %s write failed unexpectedly; retrying", self.sink.destination)
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
            attempt += 1
            self.stats.retries += 1
            self.metrics.retry()
            log.warning("sink %s write failed (attempt %d), retrying: %s", self.sink.destination, attempt,
                        self.stats.last_error)
            if not self._sleep_backoff(attempt, stop):
                return None

    def _deliver_rejecting(self, batches: list[SinkBatch], raw: dict[tuple[int, int], Message],
                           exc: SinkRejected, stop: threading.Event) -> int | None:
        """Some records are refused: DLQ them and deliver the rest, offsets still moving in order."""
        present = {(b.partition, r.offset) for b in batches for r in b.records}
        named = [k for k in exc.offsets if k in present and k in raw]
        if named:
            refused = set(named)
            self._to_dlq([(raw[k], exc) for k in named])
            kept = [SinkBatch(b.topic, b.partition, [r for r in b.records if (b.partition, r.offset) not in refused],
                              b.next_offset) for b in batches]
            return self._deliver(kept, raw, stop)
        total = len(present)
        if total == 0:
            raise SinkError(f"sink {self.sink.destination} rejected an offsets-only write: {exc}")
        if total == 1:
            rec_batch = next(b for b in batches if b.records)
            self._to_dlq([(raw[(rec_batch.partition, rec_batch.records[0].offset)], exc)])
            emptied = [SinkBatch(b.topic, b.partition, [], b.next_offset) for b in batches]
            delivered = self._deliver(emptied, raw, stop)
            return None if delivered is None else 0
        # The sink could not say which record: isolate by writing one record at a time,
        # each with its own offset, so a crash midway resumes at the right place.
        delivered = 0
        for b in batches:
            for rec in b.records:
                one = [SinkBatch(b.topic, b.partition, [rec], rec.offset + 1)]
                got = self._deliver(one, raw, stop)
                if got is None:
                    return None
                delivered += got
            if not b.records or b.records[-1].offset + 1 != b.next_offset:
                if self._deliver([SinkBatch(b.topic, b.partition, [], b.next_offset)], raw, stop) is None:
                    return None
        return delivered

    def _reseek(self, partitions: list[int]) -> None:
        if self._consumer is None:
            return
        stored = self._stored_offsets(partitions)
        for p in partitions:
            offset = stored.get(p, OFFSET_BEGINNING)
            try:
                self._consumer.seek(TopicPartition(self.topic, p, offset))
            except KafkaException as exc:  # partition no longer ours: the next owner seeks itself
                log.info("re-seek of partition %d skipped: %s", p, exc)

    def _sleep_backoff(self, attempt: int, stop: threading.Event) -> bool:
        """Full-jitter exponential backoff; False if asked to stop meanwhile."""
        cap = min(self.max_backoff_s, self.initial_backoff_s * (2 ** min(attempt - 1, 30)))
        return not stop.wait(self._rng.uniform(cap / 2, cap))

    # --- DLQ ---------------------------------------------------------------------------------
    def _to_dlq(self, items: Sequence[tuple[Message, BaseException]]) -> None:
        """Produce to the DLQ and wait until the broker has them; raises if it could not."""
        if not items:
            return
        self.metrics.dlq(len(items))
        assert self._producer is not None
        self._dlq_errors.clear()
        for msg, exc in items:
            original = [(k, v) for k, v in (msg.headers() or []) if k not in _ORIGIN_HEADERS]
            event_id = as_dict(msg.headers()).get("clinstream-event-id")
            headers = dlq_headers(
                stage=DLQ_STAGE, error=exc, origin_topic=msg.topic() or self.topic,
                origin_partition=msg.partition(), origin_offset=msg.offset(), event_id=event_id,
                extra=[("sink-destination", self.sink.destination)],
            ) + [(k, v if isinstance(v, bytes) else (v or "").encode()) for k, v in original]
            self._produce_dlq(msg.key(), msg.value(), headers)
            log.warning("sink %s: %s offset %d:%d to %s (%s)", self.sink.destination, type(exc).__name__,
                        msg.partition(), msg.offset(), self.dlq_topic, event_id or "no event id")
        attempt = 0
        while True:
            remaining = self._producer.flush(30)
            if remaining == 0 and not self._dlq_errors:
                break
            attempt += 1
            self.stats.retries += 1
            self.metrics.retry()
            if self.stop_event.is_set() and attempt > 3:
                raise SinkRetryable(f"DLQ produce failed: {self._dlq_errors[:3]}")
            log.warning("DLQ produce incomplete (%d pending, errors %s); retrying", remaining, self._dlq_errors[:3])
            if self._dlq_errors:  # failed deliveries: produce them again (the DLQ is at-least-once)
                failed, self._dlq_errors = self._dlq_failed, []
                self._dlq_failed = []
                for key, value, headers in failed:
                    self._produce_dlq(key, value, headers)
            self._sleep_backoff(attempt, threading.Event())
        self.stats.dlq += len(items)

    def _produce_dlq(self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        assert self._producer is not None

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                self._dlq_errors.append(str(err))
                self._dlq_failed.append((key, value, headers))

        while True:
            try:
                self._producer.produce(self.dlq_topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                return
            except BufferError:  # local queue full: let it drain
                self._producer.poll(0.1)


# --- entry points ------------------------------------------------------------------------------

def build_runner(destination: str, topology: Topology, settings: KafkaSettings, **runner_kwargs: Any) -> SinkRunner:
    dest = topology.destination(destination)
    if dest.sink is None:
        from connectors.sinks.errors import SinkConfigError

        raise SinkConfigError(f"destinations[{destination}].sink", "this destination has no sink configured")
    sink = create_sink(dest.sink, destination, settings)
    return SinkRunner(sink, topic=dest.topic, settings=settings, **runner_kwargs)


def run_sink(destination: str, topology: Topology, settings: KafkaSettings, stop_event: threading.Event,
             **runner_kwargs: Any) -> RunnerStats:
    """Run the sink of ``destination`` until ``stop_event`` is set; returns the delivery stats."""
    return build_runner(destination, topology, settings, **runner_kwargs).run(stop_event)


def _install_signal_handlers(stop: threading.Event) -> Callable[[], None]:
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping after the current batch", signum)
        stop.set()

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, h in previous.items():
            signal.signal(sig, h)

    return restore


def sink_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clinstream sink", description="Deliver dest.<destination> to its sink.")
    parser.add_argument("--topology", required=True, help="topology YAML file")
    parser.add_argument("--destination", required=True, help="destination name in the topology")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS)")
    parser.add_argument("--group-id", help="consumer group id (default clinstream-sink-<destination>)")
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--no-kafka-commit", action="store_true", help="do not mirror offsets to the group")
    parser.add_argument("--lag-commit-interval-s", type=float, default=1.0,
                        help="how often offsets kept in the target are mirrored to the group, for lag (default 1)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from topology.model import TopologyError

    try:
        topology = load_topology(args.topology)
        settings = KafkaSettings()
        if args.bootstrap:
            settings = settings.with_bootstrap(args.bootstrap)
        settings.require_bootstrap()
        runner = build_runner(args.destination, topology, settings, group_id=args.group_id,
                              batch_size=args.batch_size, commit_to_kafka=not args.no_kafka_commit,
                              lag_commit_interval_s=args.lag_commit_interval_s)
    except (TopologyError, SinkError, RuntimeError, ValueError) as exc:
        print(f"clinstream sink: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    restore = _install_signal_handlers(stop)
    health = HealthServer.from_settings(OpsSettings(), {"broker": broker_check(settings.librdkafka()),
                                                        "consuming": lambda: runner.running})
    health.start()
    try:
        stats = runner.run(stop)
    except SinkError as exc:  # a non-retryable sink failure (e.g. missing table with create_tables off)
        print(f"clinstream sink {args.destination}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        restore()
        health.stop()
    print(f"sink {args.destination}: delivered={stats.delivered} dlq={stats.dlq} retries={stats.retries}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(sink_main())
