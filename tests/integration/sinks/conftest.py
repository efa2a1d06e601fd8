"""Fixtures for sink integration tests: a destination topic + DLQ on the session broker."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.support.kafka import create_topics
from topology.settings import KafkaSettings


@dataclass
class Dest:
    name: str
    topic: str
    settings: KafkaSettings
    bootstrap: str


@pytest.fixture
def dest(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> Dest:
    name = unique_name("d")
    topic = f"dest.{name}"
    create_topics(kafka_bootstrap, {topic: 3, "dlq.sink": 1})
    return Dest(name, topic, KafkaSettings(bootstrap_servers=kafka_bootstrap, session_timeout_ms=6000), kafka_bootstrap)
