"""The producers' compression (KAFKA_COMPRESSION_TYPE) is read back by both client libraries the pipeline uses."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer

from streams.topic_reader import read_topic
from topology.producer import DurableProducer
from topology.settings import KafkaSettings


@pytest.mark.parametrize("codec", ["zstd", "lz4", "none"])
def test_records_produced_with_each_codec_read_back_in_librdkafka_and_aiokafka(
        codec: str, kafka_bootstrap: str, unique_name) -> None:
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, compression_type=codec)
    topic = unique_name(f"codec-{codec}")
    values = [(f'{{"resourceType":"Patient","id":"{i}","name":[{{"family":"Nguyen"}}]}}' * 20).encode()
              for i in range(300)]

    async def produce() -> None:
        producer = DurableProducer(settings, linger_ms=5)
        try:
            await asyncio.gather(*(producer.send(topic, v, key=b"k%d" % i) for i, v in enumerate(values)))
        finally:
            producer.close()

    asyncio.run(produce())

    assert sorted(m.value() for m in read_topic(settings, topic)) == sorted(values)  # librdkafka

    async def aiokafka_read() -> list[bytes]:
        c = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                             group_id=unique_name("a"), enable_auto_commit=False)
        await c.start()
        try:
            out: list[bytes] = []
            while len(out) < len(values):
                batches = await asyncio.wait_for(c.getmany(timeout_ms=1000), 30)
                out += [r.value for records in batches.values() for r in records]
            return out
        finally:
            await c.stop()

    assert sorted(asyncio.run(aiokafka_read())) == sorted(values)
