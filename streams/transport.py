"""Faust's aiokafka transport with two changes for the worker: the fetch wait, and delivery without a race per record.

**Delivery.** Faust's fetch loop hands each consumed record to the streams through
``Service.wait_first(callback(message), suspend_flow.wait())``: the delivery races the
flow being suspended for a rebalance, so a delivery blocked on a full stream buffer is
abandoned rather than holding up the rebalance. ``wait_first`` makes four tasks and an
``asyncio.wait`` for that, about 100 µs per record on this machine (``clinstream bench
consume``: 177.9 vs 76.5 µs of CPU per consumed record with and without it), while the delivery
itself almost always completes without ever suspending (the buffer has room). So the
delivery coroutine is first stepped once by hand: if it completes, that is the outcome
``wait_first`` would have reported; if it suspends, the rest of it runs inside the
original race, unchanged.

**Fetch wait.** Faust fixes aiokafka's fetch wait at 1.5 s; ``fetch_wait_ms`` (the
embedded broker answers an empty fetch only after the full wait) sets it.

**Whole fetches.** Faust hands an agent one event per record: a ``ConsumerMessage``, an
``Event``, the conductor's callback, a stream-buffer put, the stream's iteration with its
sensors and a processor that rebuilds a batch for ``take_events`` — ~120 µs of CPU per record
here, where aiokafka's ``getmany`` itself costs ~3 µs, and the worker consumes every message
twice (``clinstream bench consume``, 30,000 records, 3 rounds: 103.8 µs per record with lean
delivery, 8.4 with whole fetches). A topic with a :class:`FetchInbox` (the worker's agent topics)
skips all of it: each partition's share of a fetch goes to the inbox as one list of
``ConsumerMessage`` objects, and the agent takes batches from there
(``streams.batching.take_ready_batches``). What Faust's path guarantees is kept: records are
tracked as unacked once an agent takes them (so a rebalance and a shutdown wait for the batch
in hand) and acked after it; offsets are committed by Faust's committer from those acks, gaps
included; the inbox is cleared with the stream buffers when flow control stops or resumes for
a rebalance, and a record of an earlier generation is dropped, not processed (it is fetched
again from the committed offset); a full inbox holds up the fetch loop, raced against the flow
being suspended as Faust races a delivery. Other topics (table changelogs being recovered)
take Faust's path.
"""

from __future__ import annotations

import asyncio
import types
from collections import deque
from collections.abc import Coroutine, Generator, Iterable, Mapping
from time import monotonic
from typing import Any

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.transport.drivers.aiokafka import Transport as AIOKafkaTransport
from faust.types import TP, Message
from mode.services import WaitArgT, WaitResults
from mode.utils.times import Seconds

__all__ = ["FetchInbox", "fetch_inbox", "install_worker_transport"]


@types.coroutine
def _finish(coro: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, Any]:
    """The rest of ``coro``, which was stepped once and yielded ``yielded`` (what it awaits).

    ``yielded`` goes up to the task driving this generator exactly as ``coro`` yielded it, so
    the task waits for it; then ``coro`` continues under ``yield from``. Anything thrown in
    meanwhile (the race's cancellation) is thrown into ``coro``.
    """
    while True:
        try:
            yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        return (yield from coro)  # type: ignore[misc]


async def _rest_of(coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    """``_finish`` as a native coroutine (``Service.wait_first`` takes ``Awaitable`` objects)."""
    return await _finish(coro, yielded)


class FetchInbox:
    """Fetched records of one agent's topics, in fetch order, until the agent takes them.

    At most about ``max_records`` wait here (a put waits while the inbox holds that many; one
    partition's fetch goes in whole, so it can overshoot by one fetch); beyond that, records wait
    in aiokafka's fetch buffer as bytes, several times smaller than these message objects.
    ``clear`` drops them all; flow control calls it around a rebalance, as it clears the stream
    buffers.
    """

    def __init__(self, max_records: int) -> None:
        if max_records < 1:
            raise ValueError(f"FetchInbox: max_records {max_records} must be positive")
        self.max_records = max_records
        self._fetches: deque[list[Message]] = deque()
        self._records = 0
        self._added = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def __len__(self) -> int:
        return self._records

    async def put(self, messages: list[Message]) -> None:
        while self._records >= self.max_records:
            self._room.clear()
            await self._room.wait()
        self._fetches.append(messages)
        self._records += len(messages)
        self._added.set()

    async def wait_for_more_than(self, records: int, timeout: float | None = None) -> bool:
        """Wait until more than ``records`` records are here; False if ``timeout`` passed first."""
        while self._records <= records:
            self._added.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._added.wait()
            except TimeoutError:
                return self._records > records
        return True

    def take(self, max_: int) -> list[Message]:
        """The oldest ``max_`` records at most, in order."""
        taken: list[Message] = []
        fetches = self._fetches
        while fetches and len(taken) < max_:
            head = fetches[0]
            want = max_ - len(taken)
            if len(head) <= want:
                taken.extend(fetches.popleft())
            else:
                taken.extend(head[:want])
                fetches[0] = head[want:]
        self._records -= len(taken)
        if self._records < self.max_records:
            self._room.set()
        return taken

    def clear(self) -> None:
        self._fetches.clear()
        self._records = 0
        self._room.set()


class LeanDeliveryConsumer(AIOKafkaConsumer):
    """Faust's aiokafka consumer whose per-record delivery race is only entered when needed."""

    fetch_wait_ms: int | None = None
    lean_delivery: bool = True  # False: Faust's race for every record (``bench consume`` compares)

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def wait_first(self, *coros: WaitArgT, timeout: Seconds | None = None) -> WaitResults:
        # The fetch loop's call: (the delivery, the flow-suspended wait), no timeout.
        if (self.lean_delivery and timeout is None and len(coros) == 2 and isinstance(coros[0], types.CoroutineType)
                and isinstance(coros[1], types.CoroutineType)
                and not (self.suspend_flow.is_set() or self.should_stop or self._crashed.is_set())):
            delivery, other = coros
            try:
                yielded = delivery.send(None)
            except StopIteration as done:
                other.close()  # never started
                return WaitResults([delivery], [done.value], False)
            except BaseException:
                other.close()
                raise  # as Faust's race raises a delivery's error
            return await super().wait_first(_rest_of(delivery, yielded), other)
        return await super().wait_first(*coros, timeout=timeout)


_DELIVERED = object()  # a fetch's delivery completed (the flow-suspended wait returns True)


class WorkerConsumer(LeanDeliveryConsumer):
    """The lean consumer that hands whole fetches to the :class:`FetchInbox` of their topic."""

    fetch_inboxes: Mapping[str, FetchInbox] = types.MappingProxyType({})  # install_worker_transport's dict

    async def _drain_messages(self, fetcher: Any) -> None:  # the fetch loop, Faust's otherwise
        if not self.fetch_inboxes:
            return await super()._drain_messages(fetcher)
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
        app = self.app
        inboxes = self.fetch_inboxes
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                records, active = await self._wait_next_records(1.0)
                await self.sleep(0)  # as Faust's loop: a fetch that returns at once still yields
                if records is None or self.should_stop:
                    continue
                if not self.flow_active:
                    try:  # as Faust's getmany: the flow stopped for a rebalance
                        await self.perform_seek()
                    except Exception as exc:
                        self.log.warning("exception performing seek when flow not active %r", exc)
                    continue
                generation_id = app.consumer_generation_id
                for tp, tp_records in records.items():
                    if not self.flow_active or app.consumer_generation_id != generation_id:
                        break  # a rebalance began: the rest is fetched again from the committed offsets
                    if active is not None and tp not in active and tp not in self._buffered_partitions:
                        continue
                    app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    inbox = inboxes.get(tp.topic)
                    if inbox is None:
                        await self._deliver_each(tp, tp_records)
                    else:
                        await self._deliver_fetch(tp, tp_records, inbox)
                    if self._commit_every is not None and self._n_acked >= self._commit_every:
                        self._n_acked = 0
                        await self.commit()
                unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)

    async def _deliver_each(self, tp: TP, tp_records: Iterable[Any]) -> None:
        """Faust's delivery, a record at a time through the conductor."""
        for n, record in enumerate(tp_records, 1):
            if not n % 100:
                await asyncio.sleep(0)
            offset = record.offset
            r_offset = self._read_offset[tp]
            if r_offset is None or offset >= r_offset:
                if r_offset and offset - r_offset > 1 and self.app.topics.acks_enabled_for(tp.topic):
                    await self._add_gap(tp, r_offset + 1, offset)
                await self.wait_first(self.callback(self._to_message(tp, record)), self.suspend_flow.wait())
                self._read_offset[tp] = offset

    async def _deliver_fetch(self, tp: TP, tp_records: Iterable[Any], inbox: FetchInbox) -> None:
        r_offset = self._read_offset[tp]
        acks = self.app.topics.acks_enabled_for(tp.topic)
        to_message = self._to_message
        messages: list[Message] = []
        for record in tp_records:
            offset = record.offset
            if r_offset is None or offset >= r_offset:
                if r_offset and offset - r_offset > 1 and acks:
                    await self._add_gap(tp, r_offset + 1, offset)  # offsets no record holds: commit past them
                messages.append(to_message(tp, record))
                r_offset = offset
        if not messages:
            return
        generation_id = self.app.consumer_generation_id

        async def deliver() -> object:
            await self.app.flow_control.acquire()
            await inbox.put(messages)
            return _DELIVERED

        outcome = await self.wait_first(deliver(), self.suspend_flow.wait())
        # Abandoned for a rebalance, or in after one began: the partition's read offset stays where
        # the rebalance's seek put it (records below it would otherwise be skipped as read).
        if _DELIVERED in outcome.results and self.app.consumer_generation_id == generation_id:
            self._read_offset[tp] = r_offset

    def take_batch(self, messages: list[Message]) -> list[Message]:
        """The records of ``messages`` to process now, tracked as unacked (a rebalance waits for them).

        None while flow control is suspended, and none of an earlier generation: they are fetched
        again from the committed offsets."""
        app = self.app
        if not app.flow_control.is_active():
            return []
        generation_id = app.consumer_generation_id
        current = [m for m in messages if m.generation_id == generation_id]
        acking = app.topics.acking_topics
        unacked = self._unacked_messages
        inbound = app.monitor.stream_inbound_time
        now = monotonic()
        for message in current:
            if message.topic in acking and not message.tracked:
                message.tracked = True
                unacked.add(message)
            inbound[message.tp] = now  # Faust's "stream idle" check reads it
        return current

    def ack_batch(self, messages: Iterable[Message]) -> None:
        for message in messages:
            self.ack(message)


class _ConsumerThread(AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(self.consumer, "fetch_wait_ms", None)
        if wait_ms is not None:
            consumer._fetch_max_wait_ms = wait_ms  # read when the consumer starts its fetcher
        return consumer


def install_worker_transport(app: faust.App, fetch_wait_ms: int | None, *, lean_delivery: bool = True) -> None:
    """Give ``app`` the worker consumer: lean delivery (unless ``lean_delivery`` is false), and
    ``fetch_wait_ms`` as aiokafka's fetch wait when set. Topics given a :func:`fetch_inbox`
    afterwards get whole fetches."""
    consumer = type("WorkerConsumer", (WorkerConsumer,),
                    {"fetch_wait_ms": fetch_wait_ms, "lean_delivery": lean_delivery, "fetch_inboxes": {}})
    transport = type("WorkerTransport", (AIOKafkaTransport,), {"Consumer": consumer})
    app.transport = transport(app.conf.broker_consumer, app)


def fetch_inbox(app: faust.App, topics: Iterable[str], max_records: int) -> FetchInbox:
    """The inbox, holding ``max_records`` at most (give or take a fetch), that ``topics``' records
    reach whole fetches at a time (call it before the worker starts, after
    :func:`install_worker_transport`); cleared with the stream buffers around a rebalance."""
    consumer = type(app.transport).Consumer
    if not issubclass(consumer, WorkerConsumer):
        raise RuntimeError("fetch_inbox: install_worker_transport(app, ...) first")
    inbox = FetchInbox(max_records)
    for topic in topics:
        if topic in consumer.fetch_inboxes:
            raise ValueError(f"fetch_inbox: topic {topic!r} already has an inbox")
        consumer.fetch_inboxes[topic] = inbox  # type: ignore[index]
    app.flow_control.manage_queue(inbox)
    return inbox
