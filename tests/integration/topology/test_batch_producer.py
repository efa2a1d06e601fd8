"""BatchProducer: a batch's future resolves once its records are durable, and fails when any record failed.

Completion is read from the producer's out-queue instead of a delivery report per record, so
these tests check both directions against the real broker: nothing resolves early (every record
of a resolved batch is on its topic), and a failed record fails its batch, not its neighbours'.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from streams.topic_reader import read_topic
from topology.producer import BatchProducer, DeliveryError
from topology.settings import KafkaSettings


def _records(topic: str, batch: int, n: int) -> list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]]:
    return [(topic, b"k%d-%d" % (batch, i), b"v%d-%d" % (batch, i) * 50, [("clinstream-batch", b"%d" % batch)])
            for i in range(n)]


def test_every_record_of_a_resolved_batch_is_on_its_topic(kafka_bootstrap: str, unique_name) -> None:
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    topics = [unique_name("batch-a"), unique_name("batch-b")]
    batches = [_records(topics[b % 2], b, 40 + b) for b in range(12)]

    async def produce() -> list[list]:
        producer = BatchProducer(settings)
        try:
            futures = []
            for records in batches:  # in flight together, as the agents keep them
                futures.append(producer.send_batch(records))
                await asyncio.sleep(0.003)
            await asyncio.wait_for(asyncio.gather(*futures), 30)
            # Read back before the producer is flushed or closed: resolved must mean on the topic.
            return [await asyncio.to_thread(lambda t=t: list(read_topic(settings, t))) for t in topics]
        finally:
            producer.close()

    for t, got in enumerate(asyncio.run(produce())):
        expected = [r for b, records in enumerate(batches) if b % 2 == t for r in records]
        assert sorted((m.key(), m.value()) for m in got) == sorted((k, v) for _, k, v, _ in expected)
        assert all(dict(m.headers() or ())["clinstream-batch"] for m in got)


def test_a_failed_record_fails_its_batch_and_names_its_topic(kafka_bootstrap: str, unique_name) -> None:
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    good = unique_name("batch-good")

    async def produce() -> tuple[BaseException | None, BaseException | None]:
        producer = BatchProducer(settings)
        try:
            await producer.send_batch(_records(good, 0, 5))  # the topic exists before the test proper
            failing = producer.send_batch([*_records(good, 1, 3), ("not a topic!", b"k", b"v", []),
                                           *_records(good, 2, 3)])
            fine = producer.send_batch(_records(good, 3, 4))
            results = await asyncio.wait_for(asyncio.gather(failing, fine, return_exceptions=True), 30)
            return results[0], results[1]
        finally:
            producer.close()

    failed, fine = asyncio.run(produce())
    assert isinstance(failed, DeliveryError)
    assert "not a topic!" in str(failed)
    assert fine is None
    # The failing batch's other records were written: the failure is reported, not guessed from a neighbour.
    keys = {m.key() for m in read_topic(settings, good)}
    assert {b"k1-0", b"k2-2", b"k3-3"} <= keys


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(60)
def test_an_unreachable_broker_fails_the_batch_instead_of_resolving_it() -> None:
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{_closed_port()}")

    async def produce() -> BaseException | None:
        producer = BatchProducer(settings, **{"message.timeout.ms": 800})
        try:
            fut = producer.send_batch(_records("anywhere", 0, 10))
            return (await asyncio.wait_for(asyncio.gather(fut, return_exceptions=True), 20))[0]
        finally:
            producer.close(timeout=1)

    err = asyncio.run(produce())
    assert isinstance(err, DeliveryError)
    assert "anywhere" in str(err)


@pytest.mark.timeout(60)
def test_closing_with_records_still_queued_fails_their_batches() -> None:
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{_closed_port()}")

    async def produce() -> BaseException | None:
        producer = BatchProducer(settings)  # 30 s message timeout: still queued when closed
        fut = producer.send_batch(_records("anywhere", 0, 10))
        await asyncio.to_thread(producer.close, 0.5)
        return (await asyncio.wait_for(asyncio.gather(fut, return_exceptions=True), 10))[0]

    err = asyncio.run(produce())
    assert isinstance(err, DeliveryError)
    assert "undelivered" in str(err)
