"""Whole fetches to the agents: the fetch inbox, and the worker consumer's side of a batch (track, drop, ack).

The consumer is Faust's own, built offline from an app with the worker transport (no broker
is contacted); the records are Faust ``ConsumerMessage`` objects as the fetch loop makes them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest
from aiokafka.structs import ConsumerRecord
from faust.types import TP, ConsumerMessage

from streams.transport import FetchInbox, WorkerConsumer, fetch_inbox, install_worker_transport

TOPIC = "raw.adt"


def _message(offset: int, generation_id: int = 0, topic: str = TOPIC) -> ConsumerMessage:
    return ConsumerMessage(topic, 0, offset, 0.0, 0, [], b"k", b"v%d" % offset, None, tp=TP(topic, 0),
                           generation_id=generation_id)


def _fetch(first: int, n: int) -> list[ConsumerMessage]:
    return [_message(o) for o in range(first, first + n)]


def _worker_app(name: str) -> faust.App:
    app = faust.App(name, broker="kafka://127.0.0.1:1", store="memory://", web_enabled=False,
                    loop=asyncio.get_running_loop())
    install_worker_transport(app, 50)
    return app


def test_records_come_out_in_fetch_order_and_a_fetch_splits_at_the_batch_size() -> None:
    async def main() -> list[list[int]]:
        inbox = FetchInbox(max_records=100)
        await inbox.put(_fetch(0, 3))
        await inbox.put(_fetch(3, 4))
        assert len(inbox) == 7
        taken = [inbox.take(5), inbox.take(5), inbox.take(5)]
        assert len(inbox) == 0
        return [[m.offset for m in batch] for batch in taken]

    assert asyncio.run(main()) == [[0, 1, 2, 3, 4], [5, 6], []]


def test_a_full_inbox_holds_up_the_fetch_loop_until_the_agent_takes_a_batch() -> None:
    async def main() -> list[str]:
        steps: list[str] = []
        inbox = FetchInbox(max_records=4)
        await inbox.put(_fetch(0, 5))  # one fetch goes in whole, even past the bound

        async def fetch_loop() -> None:
            await inbox.put(_fetch(5, 2))
            steps.append("second fetch in")

        put = asyncio.create_task(fetch_loop())
        await asyncio.sleep(0.02)
        steps.append("agent takes")
        assert [m.offset for m in inbox.take(3)] == [0, 1, 2]
        await asyncio.wait_for(put, 5)
        assert [m.offset for m in inbox.take(10)] == [3, 4, 5, 6]
        return steps

    assert asyncio.run(main()) == ["agent takes", "second fetch in"]


def test_clear_drops_everything_and_lets_a_waiting_fetch_in() -> None:
    async def main() -> list[int]:
        inbox = FetchInbox(max_records=2)
        await inbox.put(_fetch(0, 2))
        put = asyncio.create_task(inbox.put(_fetch(2, 1)))
        await asyncio.sleep(0.01)
        assert not put.done()
        inbox.clear()
        await asyncio.wait_for(put, 5)
        return [m.offset for m in inbox.take(10)]

    assert asyncio.run(main()) == [2]


def test_waiting_for_more_records_times_out_or_wakes_on_a_put() -> None:
    async def main() -> tuple[bool, bool]:
        inbox = FetchInbox(max_records=10)
        await inbox.put(_fetch(0, 1))
        nothing_came = await inbox.wait_for_more_than(1, timeout=0.02)
        asyncio.get_running_loop().call_later(0.01, lambda: asyncio.ensure_future(inbox.put(_fetch(1, 1))))
        more_came = await inbox.wait_for_more_than(1, timeout=5)
        return nothing_came, more_came

    assert asyncio.run(main()) == (False, True)


def test_an_inbox_needs_a_positive_bound() -> None:
    with pytest.raises(ValueError, match="max_records 0"):
        FetchInbox(max_records=0)


def test_fetch_inbox_registers_each_topic_once_and_flow_control_clears_it() -> None:
    async def main() -> None:
        app = _worker_app("fetch-inbox-register")
        inbox = fetch_inbox(app, [TOPIC, "mpi.review"], 100)
        consumer = app.consumer
        assert isinstance(consumer, WorkerConsumer)
        assert consumer.fetch_inboxes == {TOPIC: inbox, "mpi.review": inbox}
        with pytest.raises(ValueError, match=r"'raw\.adt' already has an inbox"):
            fetch_inbox(app, [TOPIC], 100)
        await inbox.put(_fetch(0, 3))
        app.flow_control.clear()  # what a rebalance does to the stream buffers
        assert len(inbox) == 0

    asyncio.run(main())


def test_fetch_inbox_needs_the_worker_transport() -> None:
    app = faust.App("fetch-inbox-plain", broker="kafka://127.0.0.1:1", store="memory://", web_enabled=False)
    with pytest.raises(RuntimeError, match="install_worker_transport"):
        fetch_inbox(app, [TOPIC], 100)


def test_a_taken_batch_is_tracked_until_acked_and_its_offsets_become_committable() -> None:
    async def main() -> dict[str, Any]:
        app = _worker_app("fetch-inbox-ack")
        app.topics.acking_topics.add(TOPIC)  # the conductor's set for subscribed topics with acks
        app.flow_control.resume()
        consumer = app.consumer
        tp = TP(TOPIC, 0)
        consumer._committed_offset[tp] = None
        batch = consumer.take_batch(_fetch(0, 3))
        tracked = sorted(m.offset for m in consumer.unacked)
        consumer.ack_batch(batch)
        return {"batch": [m.offset for m in batch], "tracked": tracked, "left": len(consumer.unacked),
                "commit_at": consumer._new_offset(tp), "inbound": tp in app.monitor.stream_inbound_time}

    assert asyncio.run(main()) == {"batch": [0, 1, 2], "tracked": [0, 1, 2], "left": 0, "commit_at": 3,
                                   "inbound": True}


def test_records_of_an_earlier_generation_or_a_suspended_flow_are_not_processed() -> None:
    async def main() -> tuple[list[int], list[int], int]:
        app = _worker_app("fetch-inbox-generation")
        app.topics.acking_topics.add(TOPIC)
        consumer = app.consumer
        app.flow_control.suspend()
        while_suspended = [m.offset for m in consumer.take_batch(_fetch(0, 2))]
        app.flow_control.resume()
        app.consumer_generation_id = 7
        mixed = [_message(5, generation_id=6), _message(6, generation_id=7)]
        current = [m.offset for m in consumer.take_batch(mixed)]
        return while_suspended, current, len(consumer.unacked)

    # Not tracked either: they are fetched again from the committed offset after the rebalance.
    assert asyncio.run(main()) == ([], [6], 1)


def _records(*offsets: int) -> list[ConsumerRecord[bytes, bytes]]:
    return [ConsumerRecord(TOPIC, 0, o, 1_700_000_000_000, 0, b"k", b"v%d" % o, None, 1, 2, ()) for o in offsets]


def _fetch_loop_consumer(name: str) -> Any:
    app = _worker_app(name)
    app.topics.acking_topics.add(TOPIC)
    app.flow_control.resume()
    consumer = app.consumer
    consumer._committed_offset[TP(TOPIC, 0)] = None
    return consumer


def test_a_fetch_goes_in_whole_and_moves_the_read_offset_past_it() -> None:
    async def main() -> tuple[list[int], int, list[tuple[int, int]]]:
        consumer = _fetch_loop_consumer("fetch-deliver")
        tp = TP(TOPIC, 0)
        inbox = FetchInbox(max_records=100)
        consumer._read_offset[tp] = 10  # where the last fetch (or a seek) left it
        await consumer._deliver_fetch(tp, _records(8, 10, 11, 14), inbox)
        gaps = sorted((iv.begin, iv.end) for iv in consumer._gap[tp])
        return [m.offset for m in inbox.take(100)], consumer._read_offset[tp], gaps

    delivered, read_offset, gaps = asyncio.run(main())
    assert delivered == [10, 11, 14]  # 8 was read already; 10 is Faust's seek position, read again
    assert read_offset == 14
    # 12 and 13 hold no record (compaction, transaction markers): commits pass them. Faust's gap
    # interval ends past the record after it (its own drain loop adds the same).
    assert gaps == [(12, 15)]


def test_a_fetch_held_up_by_a_full_inbox_is_abandoned_when_a_rebalance_suspends_the_flow() -> None:
    async def main() -> tuple[int, int | None]:
        consumer = _fetch_loop_consumer("fetch-abandon")
        tp = TP(TOPIC, 0)
        inbox = FetchInbox(max_records=1)
        await inbox.put(_fetch(0, 1))  # full
        consumer._read_offset[tp] = 1
        asyncio.get_running_loop().call_later(0.02, consumer.suspend_flow.set)
        await asyncio.wait_for(consumer._deliver_fetch(tp, _records(1, 2), inbox), 5)
        return len(inbox), consumer._read_offset[tp]

    # Not delivered, and the read offset stays for the rebalance's seek: 1 and 2 are read again.
    assert asyncio.run(main()) == (1, 1)
