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
"""

from __future__ import annotations

import types
from collections.abc import Coroutine, Generator
from typing import Any

import faust
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.transport.drivers.aiokafka import Transport as AIOKafkaTransport
from mode.services import WaitArgT, WaitResults
from mode.utils.times import Seconds

__all__ = ["install_worker_transport"]


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


class _ConsumerThread(AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(self.consumer, "fetch_wait_ms", None)
        if wait_ms is not None:
            consumer._fetch_max_wait_ms = wait_ms  # read when the consumer starts its fetcher
        return consumer


def install_worker_transport(app: faust.App, fetch_wait_ms: int | None, *, lean_delivery: bool = True) -> None:
    """Give ``app`` the worker consumer: lean delivery (unless ``lean_delivery`` is false) and
    ``fetch_wait_ms`` as aiokafka's fetch wait when set."""
    consumer = type("WorkerConsumer", (LeanDeliveryConsumer,),
                    {"fetch_wait_ms": fetch_wait_ms, "lean_delivery": lean_delivery})
    transport = type("WorkerTransport", (AIOKafkaTransport,), {"Consumer": consumer})
    app.transport = transport(app.conf.broker_consumer, app)
