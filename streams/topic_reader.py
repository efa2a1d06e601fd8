"""Read a topic from the beginning to its current end (CLI tools: audit, review)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from confluent_kafka import Consumer, Message, TopicPartition

from topology.settings import KafkaSettings


class TopicNotFound(RuntimeError):
    """The topic does not exist on the cluster."""


def read_topic(settings: KafkaSettings, topic: str, *, timeout_s: float = 10.0) -> Iterator[Message]:
    """Yield every record currently on ``topic`` (all partitions), then stop.

    Uses manual assignment and no group commits, so reading never disturbs a
    consumer group; the end is the high watermark seen when reading starts.
    """
    consumer = Consumer(settings.librdkafka(**{
        "group.id": f"clinstream-reader-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
    }))
    try:
        md = consumer.list_topics(topic, timeout=timeout_s)
        meta = md.topics.get(topic)
        if meta is None or meta.error is not None:
            raise TopicNotFound(f"topic {topic!r} does not exist")
        ends: dict[int, int] = {}
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            if high > low:
                ends[p] = high
        if not ends:
            return
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        remaining = dict(ends)
        while remaining:
            batch = consumer.consume(1000, timeout_s)
            if not batch:
                break
            for msg in batch:
                if msg.error() is not None:
                    continue
                end = remaining.get(msg.partition())
                if end is None:
                    continue
                yield msg
                if msg.offset() + 1 >= end:
                    del remaining[msg.partition()]
    finally:
        consumer.close()
