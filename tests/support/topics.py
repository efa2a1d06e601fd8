"""Small Kafka helpers for tests: create topics, read a topic to the end."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def create_topics(bootstrap: str, names: list[str], partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    for fut in futures.values():
        try:
            fut.result(timeout=15)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


def read_all(bootstrap: str, topic: str, expect: int | None = None, timeout_s: float = 30.0) -> list[Message]:
    """Every record currently on ``topic`` (all partitions), waiting for ``expect`` records if given."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        md = consumer.list_topics(topic, timeout=10)
        parts = list(md.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        out: list[Message] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = consumer.consume(1000, 1.5 if expect is None else 0.5)
            out.extend(m for m in batch if m.error() is None)
            if expect is not None and len(out) >= expect:
                break
            if expect is None and not batch:
                # idle: the embedded broker under-reports high watermarks, so "nothing more came" is the end
                break
        return out
    finally:
        consumer.close()
