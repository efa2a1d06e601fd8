"""The worker consumer's delivery: stepped once by hand, raced against a flow suspension only when it waits.

The consumer is Faust's own (built offline from an app with the worker transport); the
deliveries are coroutines shaped like Faust's (complete at once when the stream buffer has
room, wait on a future when it is full).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import faust
import pytest

from streams.transport import LeanDeliveryConsumer, install_worker_transport


class _LoopBound:
    """The worker consumer, built on first use inside the running event loop (a mode Service
    schedules its tasks on the loop it was made in, as in the worker)."""

    def __init__(self) -> None:
        self._consumer: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._consumer is None:
            app = faust.App("transport-test", broker="kafka://127.0.0.1:1", store="memory://",
                            web_enabled=False, loop=asyncio.get_running_loop())
            install_worker_transport(app, 50)
            self._consumer = app.consumer
            assert isinstance(self._consumer, LeanDeliveryConsumer)
        return getattr(self._consumer, name)


@pytest.fixture
def consumer() -> Iterator[Any]:
    yield _LoopBound()


def test_a_delivery_that_does_not_wait_completes_without_the_race(consumer: Any) -> None:
    steps: list[str] = []

    async def deliver(x: int) -> int:
        steps.append("delivered")
        return x * 2

    async def main() -> Any:
        flow = consumer.suspend_flow.wait()
        result = await consumer.wait_first(deliver(21), flow)
        assert flow.cr_frame is None  # the flow wait was closed, not left un-awaited
        return result

    result = asyncio.run(main())
    assert result.results == [42] and not result.stopped
    assert steps == ["delivered"]


def test_a_delivery_that_waits_finishes_inside_the_race(consumer: Any) -> None:
    async def main() -> Any:
        room: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def deliver() -> str:
            first = await room  # the stream buffer is full until the agent takes a batch
            await asyncio.sleep(0)
            return first + "+delivered"

        asyncio.get_running_loop().call_later(0.02, room.set_result, "room")
        return await asyncio.wait_for(consumer.wait_first(deliver(), consumer.suspend_flow.wait()), 5)

    result = asyncio.run(main())
    assert result.results == ["room+delivered"]


def test_a_waiting_delivery_is_abandoned_when_the_flow_is_suspended(consumer: Any) -> None:
    cleaned_up: list[bool] = []

    async def main() -> Any:
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def deliver() -> None:
            try:
                await never
            finally:
                cleaned_up.append(True)

        asyncio.get_running_loop().call_later(0.02, consumer.suspend_flow.set)
        result = await asyncio.wait_for(consumer.wait_first(deliver(), consumer.suspend_flow.wait()), 5)
        await asyncio.sleep(0)  # the cancelled delivery runs its cleanup
        return result

    result = asyncio.run(main())
    assert len(result.done) == 1 and result.results == [True]  # Event.wait() won
    assert cleaned_up == [True]


def test_delivery_errors_propagate_whether_or_not_it_waited(consumer: Any) -> None:
    async def at_once() -> None:
        raise ValueError("bad record")

    async def after_waiting() -> None:
        await asyncio.sleep(0.01)
        raise KeyError("bad later")

    async def main() -> None:
        with pytest.raises(ValueError, match="bad record"):
            await consumer.wait_first(at_once(), consumer.suspend_flow.wait())
        with pytest.raises(KeyError, match="bad later"):
            await consumer.wait_first(after_waiting(), consumer.suspend_flow.wait())

    asyncio.run(main())


def test_a_suspended_flow_takes_faust_own_path(consumer: Any) -> None:
    started: list[bool] = []

    async def deliver() -> None:
        started.append(True)

    async def main() -> Any:
        consumer.suspend_flow.set()
        return await asyncio.wait_for(consumer.wait_first(deliver(), consumer.suspend_flow.wait()), 5)

    result = asyncio.run(main())
    assert not result.stopped and len(result.done) >= 1  # Faust's race decided it, as before


def test_the_fetch_wait_reaches_the_aiokafka_consumer_setting() -> None:
    for wait in (37, None):
        app = faust.App(f"transport-wait-{wait}", broker="kafka://127.0.0.1:1", store="memory://",
                        web_enabled=False)
        install_worker_transport(app, wait)
        assert app.consumer.fetch_wait_ms == wait
