"""Reading topics to their end, for the tools (audit, review, DLQ, replay).

The end of each partition is the fetch's end-of-partition event, not a
ListOffsets watermark: the embedded broker answers ListOffsets(latest) with the
last *batch's* base offset + 1, which would cut a read short. Consumers here only
``assign()`` and never commit, so reading never disturbs a consumer group.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from topology.settings import KafkaSettings


class TopicNotFound(RuntimeError):
    """The topic does not exist on the cluster."""


class TopicReadTimeout(RuntimeError):
    """Partitions never reached their end (nothing arrived for the idle timeout)."""


def tool_consumer(settings: KafkaSettings, purpose: str) -> Consumer:
    return Consumer(settings.librdkafka(**{
        "group.id": f"clinstream-{purpose}-{uuid.uuid4().hex[:10]}",  # assign() only; never commits
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
        # tools read to the end and stop: do not let the broker hold an empty fetch open
        "fetch.wait.max.ms": 20,
    }))


class PartitionReader:
    """Yields the records of ``assignment`` until every partition reported its end.

    ``stop(topic, partition)`` ends a partition early (replay stops past its window).
    """

    def __init__(self, consumer: Consumer, assignment: Sequence[TopicPartition], idle_timeout_s: float = 30) -> None:
        self.consumer = consumer
        self.assignment = list(assignment)
        self.idle_timeout_s = idle_timeout_s
        self.todo = {(tp.topic, tp.partition) for tp in self.assignment}

    def stop(self, topic: str, partition: int) -> None:
        self.todo.discard((topic, partition))

    def __iter__(self) -> Iterator[Message]:
        if not self.assignment:
            return
        self.consumer.assign(self.assignment)
        idle_deadline = time.monotonic() + self.idle_timeout_s
        while self.todo:
            batch = self.consumer.consume(500, 0.1)
            if batch:
                idle_deadline = time.monotonic() + self.idle_timeout_s
            elif time.monotonic() > idle_deadline:
                raise TopicReadTimeout(f"partitions {sorted(self.todo)} never reached their end")
            for msg in batch:
                tp = (msg.topic(), msg.partition())
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        self.todo.discard(tp)
                    continue
                if tp in self.todo:
                    yield msg


def read_topics(settings: KafkaSettings, topics: Sequence[str], *, purpose: str = "reader",
                missing_ok: bool = True) -> Iterator[Message]:
    """Every record on ``topics`` from the start up to their end, then stop."""
    if not topics:
        return
    consumer = tool_consumer(settings, purpose)
    try:
        md = consumer.list_topics(timeout=10)
        missing = [t for t in topics if t not in md.topics or md.topics[t].error is not None]
        if missing and not missing_ok:
            raise TopicNotFound(f"topic {missing[0]!r} does not exist")
        assignment = [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics if t not in missing
                      for p in md.topics[t].partitions]
        yield from PartitionReader(consumer, assignment)
    finally:
        consumer.close()


def read_topic(settings: KafkaSettings, topic: str) -> Iterator[Message]:
    """Every record currently on ``topic``; ``TopicNotFound`` if there is no such topic."""
    return read_topics(settings, [topic], missing_ok=False)
