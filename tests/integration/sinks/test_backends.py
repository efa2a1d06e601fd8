"""The session fixtures give a working Kafka and PostgreSQL, whichever backend served them."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
from confluent_kafka import Consumer, Producer

from tests.support.kafka import TEST_CONSUMER_CONF, create_topics


def test_pg_dsn_answers(fresh_pg_dsn: str) -> None:
    with psycopg.connect(fresh_pg_dsn) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1), (2)")
        assert conn.execute("SELECT sum(x) FROM t").fetchone() == (3,)


def test_kafka_roundtrip(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> None:
    topic = unique_name("smoke")
    create_topics(kafka_bootstrap, {topic: 1})
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, b"hello")
    assert producer.flush(10) == 0
    consumer = Consumer({
        "bootstrap.servers": kafka_bootstrap, "group.id": unique_name("g"), "auto.offset.reset": "earliest",
        **TEST_CONSUMER_CONF,
    })
    consumer.subscribe([topic])
    try:
        got = None
        for _ in range(60):
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got = msg.value()
                break
        assert got == b"hello"
    finally:
        consumer.close()
