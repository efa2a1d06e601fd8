"""A Kafka cluster for tests: external, testcontainers, or the embedded Tansu broker.

Order: ``CLINSTREAM_TEST_BOOTSTRAP`` → testcontainers Apache Kafka (KRaft) when a
Docker daemon answers → :class:`topology.broker.EmbeddedBroker` (in memory).
Same tests and assertions whichever backend answers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka.admin import AdminClient, NewTopic

from tests.support.docker import docker_available
from topology.broker import EmbeddedBroker, wait_for_metadata

# Consumer settings the embedded broker needs (DESIGN §4): group joins take ~session.timeout/2.
TEST_CONSUMER_CONF = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}


@dataclass
class KafkaServer:
    bootstrap: str
    backend: str  # "external" | "testcontainers" | "embedded"
    _stop: Callable[[], None] = field(default=lambda: None, repr=False)

    def stop(self) -> None:
        self._stop()


def _start_container() -> KafkaServer:
    from testcontainers.kafka import KafkaContainer

    container = KafkaContainer("confluentinc/cp-kafka:7.6.0").with_kraft()
    container.start()
    return KafkaServer(container.get_bootstrap_server(), "testcontainers", container.stop)


def kafka_bootstrap() -> KafkaServer:
    """Start (or locate) a Kafka cluster; call ``.stop()`` when done."""
    external = os.environ.get("CLINSTREAM_TEST_BOOTSTRAP")
    if external:
        wait_for_metadata(external, 30)
        return KafkaServer(external, "external")
    if docker_available():
        return _start_container()
    broker = EmbeddedBroker().start()
    return KafkaServer(broker.bootstrap, "embedded", broker.stop)


def create_topics(bootstrap: str, topics: dict[str, int], timeout_s: float = 15.0) -> None:
    """Create topics (name -> partitions); existing ones are left alone."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=parts, replication_factor=1) for name, parts in topics.items()],
        operation_timeout=timeout_s,
    )
    for name, fut in futures.items():
        try:
            fut.result(timeout=timeout_s)
        except Exception as exc:
            if "already exists" not in str(exc).lower() and "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"cannot create topic {name}: {exc}") from exc
