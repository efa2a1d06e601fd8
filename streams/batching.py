"""Batches of what is ready: an agent's input taken as soon as it stops arriving.

Faust's ``Stream.take_events(max_, within)`` yields a batch when it holds ``max_`` events
or ``within`` after the previous batch was taken, whatever arrived in between. So below
saturation every batch waits the whole ``within``, and the worker's two agents (each
waiting its own ``within``) left the worker idle part of every cycle while records queued:
``bench pipeline`` at 500 msg/s offered, 60% of capacity, gave 130-220 ms p50 per agent
hop, and the take wait was 40 of every ~95 ms of the first agent's cycle.

``take_ready_events`` ends a batch at ``max_`` events, at ``within`` after its first event,
or when no event was added for ``idle`` — the fetch that delivered the last burst has been
handed over and nothing else is there yet. Under load the events keep coming and batches
fill as before (``max_`` or ``within``: the per-batch costs — a produce request per output
topic, an index flush — stay spread over as many records); below it, a batch goes as soon as
its records are in. Everything else is Faust's ``take_events``: the same buffering processor
on the stream, acks after the batch was consumed, at most ``max_`` events per batch.

``take_ready_batches`` applies the same three rules to whole fetches (``streams.transport``'s
fetch inbox, no Faust event per record): what the worker's agents run. ``take_ready_events``
stays for ``bench consume``, which measures the event-per-record path against it.
"""

from __future__ import annotations

import asyncio
from asyncio import CancelledError
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from mode.utils.aiter import aiter
from mode.utils.futures import notify

if TYPE_CHECKING:
    from faust.types import Message

    from streams.transport import FetchInbox


def take_ready_events(stream: Any, max_: int, within: float, idle: float) -> AsyncGenerator[list[Any], None]:
    """Lists of at most ``max_`` events of ``stream`` (a Faust stream), as described above.

    ``idle >= within`` is Faust's behaviour but for the clock's start (the first event, not the
    previous batch). The generator is registered with the stream as Faust registers its own
    buffering generators, so ``Stream.on_stop`` closes it (acks, processor removed)."""
    if max_ < 1 or within <= 0 or idle <= 0:
        raise ValueError(f"take_ready_events: max_ {max_}, within {within} and idle {idle} must be positive")
    batches = _take_ready_events(stream, max_, within, idle)
    stream._active_agens.add(batches)
    return batches


async def _take_ready_events(stream: Any, max_: int, within: float, idle: float) -> AsyncGenerator[list[Any], None]:
    events: list[Any] = []
    added = asyncio.Event()  # set by each event added
    full = asyncio.Event()
    consumed = asyncio.Event()
    consuming: asyncio.Future[None] | None = None
    loop = asyncio.get_running_loop()

    async def add_to_buffer(value: Any) -> Any:
        nonlocal consuming
        try:
            if consuming is not None:  # a batch is being processed: the next one starts after it
                try:
                    await consuming
                finally:
                    consuming = None
            event = stream.current_event
            if event is None:
                raise RuntimeError("take_ready_events: the stream has no current event")
            events.append(event)
            added.set()
            if len(events) >= max_:
                full.set()
                consumed.clear()
                await stream.wait(consumed)  # never more than max_ in a batch
        except CancelledError:
            raise
        except Exception as exc:
            stream.log.exception("Error adding to take buffer: %r", exc)
            await stream.crash(exc)
        return value

    stream_enable_acks = stream.enable_acks
    stream.enable_acks = False  # acked here, once the batch was consumed
    stream.add_processor(add_to_buffer)
    stream._enable_passive(aiter(stream.channel))
    try:
        while not stream.should_stop:
            # Empty here: the last batch was cleared, and no event is added before this wait.
            added.clear()
            if await stream.wait_for_stopped(added):  # the first event (or the stream stopped)
                break
            deadline = loop.time() + within
            while not full.is_set():
                wait = min(idle, deadline - loop.time())
                if wait <= 0:
                    break
                added.clear()
                try:
                    async with asyncio.timeout(wait):
                        await added.wait()
                except TimeoutError:
                    break  # nothing came for ``idle`` (or the batch is ``within`` old)
            consuming = loop.create_future()
            try:
                yield list(events)
            finally:
                for event in events:
                    await stream.ack(event)
                events.clear()
                notify(consuming)
                full.clear()
                consumed.set()
    finally:
        stream.enable_acks = stream_enable_acks
        stream._processors.remove(add_to_buffer)


async def take_ready_batches(stream: Any, inbox: FetchInbox, max_: int, within: float,
                             idle: float) -> AsyncGenerator[list[Message], None]:
    """Lists of at most ``max_`` records (Faust ``ConsumerMessage``) of ``stream``'s topics, taken from
    their ``inbox`` (``streams.transport.fetch_inbox``) on the three rules of ``take_ready_events``:
    ``max_`` records, ``within`` after the batch began, or ``idle`` without a record added. Records
    that queued while the last batch was processed are all there at once, so under load a batch is
    ``max_`` records taken without waiting. A batch is acked once the loop body is done with it
    (not if it raised)."""
    if max_ < 1 or within <= 0 or idle <= 0:
        raise ValueError(f"take_ready_batches: max_ {max_}, within {within} and idle {idle} must be positive")
    aiter(stream.channel)  # subscribes the topics (their records come through the inbox)
    consumer = stream.app.consumer
    loop = asyncio.get_running_loop()
    while True:
        await inbox.wait_for_more_than(0)
        deadline = loop.time() + within
        while len(inbox) < max_:
            wait = min(idle, deadline - loop.time())
            if wait <= 0 or not await inbox.wait_for_more_than(len(inbox), wait):
                break
        batch = consumer.take_batch(inbox.take(max_))
        if batch:  # none while a rebalance suspends the flow, none of an earlier generation
            yield batch
            consumer.ack_batch(batch)
