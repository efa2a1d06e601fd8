"""Read a topic from the beginning to its current end (CLI tools: audit, review)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from confluent_kafka import Consumer, Message, TopicPartition

from topology.settings import KafkaSettings


class TopicNotFound(RuntimeError):
    """The topic does not exist on the cluster."""


def read_topic(settings: KafkaSettings, topic: str, *, timeout_s: float = 10.0,
               idle_s: float = 1.5) -> Iterator[Message]:
    """Yield every record currently on ``topic`` (all partitions), then stop.

    Uses manual assignment and no group commits, so reading never disturbs a
    consumer group. The end is "nothing more arrived for ``idle_s``" rather than
    the high watermark: some brokers (the embedded one) under-report it.
    """
    consumer = Consumer(settings.librdkafka(**{
        "group.id": f"clinstream-reader-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 100,
    }))
    try:
        md = consumer.list_topics(topic, timeout=timeout_s)
        meta = md.topics.get(topic)
        if meta is None or meta.error is not None:
            raise TopicNotFound(f"topic {topic!r} does not exist")
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        while True:
            batch = consumer.consume(1000, idle_s)
            if not batch:
                return
            for msg in batch:
                if msg.error() is None:
                    yield msg
    finally:
        consumer.close()
