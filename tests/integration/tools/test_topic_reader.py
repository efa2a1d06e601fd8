"""The tools' topic reader stops at each partition's real end (not at a ListOffsets watermark)."""

import pytest
from confluent_kafka import Producer

from streams.topic_reader import TopicNotFound, read_topic
from tests.support.topics import create_topics
from topology.settings import KafkaSettings


def test_reads_every_record_of_batched_partitions(kafka_bootstrap: str, unique_name):
    topic = unique_name("reader")
    create_topics(kafka_bootstrap, [topic], partitions=3)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 50})
    for i in range(300):  # several records per batch: the case the embedded broker's watermarks get wrong
        producer.produce(topic, str(i).encode(), key=str(i % 7).encode())
    producer.flush(30)
    got = sorted(int(m.value()) for m in read_topic(KafkaSettings(bootstrap_servers=kafka_bootstrap), topic))
    assert got == list(range(300))


def test_missing_topic_is_named(kafka_bootstrap: str, unique_name):
    name = unique_name("absent")
    with pytest.raises(TopicNotFound, match=name):
        list(read_topic(KafkaSettings(bootstrap_servers=kafka_bootstrap), name))
