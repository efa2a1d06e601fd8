"""The durable producer sources and stream agents use: idempotent, acks=all, batched, awaitable.

``await producer.send(...)`` returns only once the broker has durably accepted
the record (its delivery report came back without error) — the precondition
for acknowledging a sender (commit-then-ACK). librdkafka batches records from
all connections together (``linger.ms``), so many concurrent senders share
a few produce requests.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from topology.settings import KafkaSettings

log = logging.getLogger(__name__)


class DeliveryError(RuntimeError):
    """The broker did not durably accept a record; the sender must not be acknowledged."""


class _PolledProducer:
    """A librdkafka producer with the thread that polls it (delivery reports are served there)."""

    def _start(self, settings: KafkaSettings, conf: dict[str, Any], poll_loop: Callable[[], None],
               thread_name: str) -> None:
        """Create the producer (``conf`` over the queue defaults both kinds use) and its poll thread."""
        self._producer = Producer(settings.librdkafka_producer(**{
            "batch.num.messages": 10000,
            "message.timeout.ms": 30000,
            "queue.buffering.max.messages": 200000,
            **conf,
        }))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=poll_loop, name=thread_name, daemon=True)
        self._thread.start()

    def flush(self, timeout: float = 30.0) -> int:
        return self._producer.flush(timeout)

    def _shutdown(self, timeout: float) -> int:
        """Flush, stop the poll thread; the number of records still undelivered."""
        remaining: int = self._producer.flush(timeout)
        self._stop.set()
        self._thread.join(timeout=2)
        if remaining:
            log.warning("producer closed with %d undelivered records", remaining)
        return remaining


class DurableProducer(_PolledProducer):
    def __init__(self, settings: KafkaSettings, *, linger_ms: int = 0, **overrides: Any) -> None:
        # linger 0: a sender waiting for its ACK should not wait for a batch to fill; librdkafka still
        # batches whatever queues up while a produce request is in flight (bench mllp: 1 connection
        # 350 -> 1,600 msg/s, 16 connections 4,200 -> 5,200 msg/s).
        self._start(settings, {"linger.ms": linger_ms, **overrides}, self._poll_loop, "producer-poll")

    def _poll_loop(self) -> None:
        # Delivery callbacks run on this thread and hop back to the owning event loop.
        while not self._stop.is_set():
            self._producer.poll(0.05)

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> tuple[int, int]:
        """Produce one record and wait for its delivery report; returns (partition, offset)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[int, int]] = loop.create_future()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                loop.call_soon_threadsafe(_set_exc, fut, DeliveryError(f"{topic}: {err.str()}"))
            else:
                loop.call_soon_threadsafe(_set_result, fut, (msg.partition(), msg.offset()))

        kwargs: dict[str, Any] = {"key": key, "headers": list(headers or ()), "on_delivery": on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                self._producer.produce(topic, value, **kwargs)
                break
            except BufferError:
                # local queue full: back-pressure the sender instead of failing it
                await asyncio.sleep(0.005)
            except KafkaException as exc:
                raise DeliveryError(f"{topic}: {exc}") from exc
        return await fut

    def send_batch(
        self,
        records: Sequence[tuple[str, bytes | None, bytes | None, Sequence[tuple[str, bytes]]]],
        partitioned: Sequence[tuple[str, int, bytes | None, bytes | None]] = (),
        delivered: dict[tuple[str, int], int] | None = None,
    ) -> asyncio.Future[None]:
        """Produce many records (topic, key, value, headers); the future resolves once *all* are durable.

        One future per batch instead of one per record: the agents produce several records per
        input event, and per-record futures cost more than the produce calls themselves.
        ``partitioned`` records (topic, partition, key, value: table changelogs) go to the partition
        given; the highest offset delivered per (topic, partition) of those is put in ``delivered``.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if not records and not partitioned:
            fut.set_result(None)
            return fut
        state = {"left": len(records) + len(partitioned), "error": None}
        lock = threading.Lock()
        highest = delivered if delivered is not None else {}

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            with lock:
                if err is not None and state["error"] is None:
                    state["error"] = f"{msg.topic()}: {err.str()}"
                state["left"] -= 1
                done = state["left"] == 0
            if done:
                if state["error"] is not None:
                    loop.call_soon_threadsafe(_set_exc, fut, DeliveryError(str(state["error"])))
                else:
                    loop.call_soon_threadsafe(_set_result, fut, None)

        def on_partitioned_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                tp = (msg.topic(), msg.partition())
                with lock:
                    if msg.offset() > highest.get(tp, -1):
                        highest[tp] = msg.offset()
            on_delivery(err, msg)

        for topic, key, value, headers in records:
            self._produce_waiting(topic, value, key=key, headers=list(headers), on_delivery=on_delivery)
        for topic, partition, key, value in partitioned:
            self._produce_waiting(topic, value, key=key, partition=partition, on_delivery=on_partitioned_delivery)
        return fut

    def _produce_waiting(self, topic: str, value: bytes | None, **kwargs: Any) -> None:
        while True:
            try:
                self._producer.produce(topic, value, **kwargs)
                return
            except BufferError:
                self._producer.poll(0.01)  # local queue full: let deliveries drain

    def produce_nowait(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        """Fire-and-flush: for tools that call ``flush()`` afterwards (redrive, replay)."""
        self._produce_waiting(topic, value, key=key, headers=list(headers or ()))

    def close(self, timeout: float = 30.0) -> None:
        self._shutdown(timeout)


class _Batch:
    """One ``BatchProducer.send_batch`` call: its future, and the first failure reported for it."""

    __slots__ = ("error", "future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
        self.loop = loop
        self.future = future
        self.error: str | None = None

    def failed(self, err: KafkaError | None, msg: Message) -> None:
        """The delivery report of a failed record (``delivery.report.only.error``: no others come)."""
        if err is not None and self.error is None:
            self.error = f"{msg.topic()}: {err.str()}"

    def complete(self) -> None:
        if self.error is not None:
            self.loop.call_soon_threadsafe(_set_exc, self.future, DeliveryError(self.error))
        else:
            self.loop.call_soon_threadsafe(_set_result, self.future, None)


class BatchProducer(_PolledProducer):
    """Batches of records, each with one future that resolves once all its records are durable.

    For the stream agents' outputs, a dozen-odd records per input event. ``DurableProducer``
    learns about each record from its delivery report: librdkafka hands every report to Python,
    where confluent-kafka builds a ``Message`` (a copy of the record's key and value) and calls
    back on the poll thread, taking the interpreter from the stages for each record. Measured
    with 17 records per event of the worker's sizes in batches of 60 (3 alternating rounds):
    354-359 vs 380-431 us of CPU per event, about 3% of the worker's CPU per message.

    Here delivery reports come only for failed records (``delivery.report.only.error``), and a
    batch is known to be complete from the producer's out-queue length instead: the number of
    records not yet acknowledged or failed plus the reports not yet served. The poll thread
    notes how many batches have been handed over in full, polls (serving the failure reports,
    which mark their batch failed), and when the out-queue is then empty every record of those
    batches has been acknowledged by the broker, or has failed and its batch knows it.

    The out-queue empties whenever the broker keeps up with the agents, which produce at the end
    of each batch; when it does not, batches complete together once the caller stops adding
    (``InFlightOutputs`` waits for the oldest batch past its in-flight limit).
    """

    def __init__(self, settings: KafkaSettings, *, linger_ms: int = 5, poll_interval_s: float = 0.002,
                 **overrides: Any) -> None:
        self._poll_interval_s = poll_interval_s
        self._lock = threading.Lock()
        self._handed_over: list[_Batch] = []  # every record produced; waiting for the out-queue to empty
        conf = {"linger.ms": linger_ms, **overrides,
                "delivery.report.only.error": True}  # completion is the out-queue's length, not reports
        self._start(settings, conf, self._poll_loop, "batch-producer-poll")

    def send_batch(
        self, records: Sequence[tuple[str, bytes | None, bytes | None, Sequence[tuple[str, bytes]]]]
    ) -> asyncio.Future[None]:
        """Produce (topic, key, value, headers) records; the future resolves once all are durable,
        or fails with ``DeliveryError`` naming the first record that was not."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if not records:
            fut.set_result(None)
            return fut
        batch = _Batch(loop, fut)
        failed = batch.failed
        produce = self._producer.produce
        for topic, key, value, headers in records:
            while True:
                try:
                    produce(topic, value, key=key, headers=list(headers), on_delivery=failed)
                    break
                except BufferError:
                    time.sleep(0.005)  # local queue full: the poll thread drains it
        with self._lock:
            self._handed_over.append(batch)
        return fut

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                handed = len(self._handed_over)  # batches produced in full before the check below
            self._producer.poll(self._poll_interval_s if handed else 0.01)
            if handed and len(self._producer) == 0:
                with self._lock:
                    done, self._handed_over = self._handed_over[:handed], self._handed_over[handed:]
                for batch in done:
                    batch.complete()

    def close(self, timeout: float = 30.0) -> None:
        remaining = self._shutdown(timeout)
        left, self._handed_over = self._handed_over, []
        for batch in left:  # the poll loop stopped before it saw the out-queue empty
            if remaining and batch.error is None:
                batch.error = f"{remaining} records undelivered when the producer closed"
            if not batch.loop.is_closed():
                batch.complete()


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exc(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
