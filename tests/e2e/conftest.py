from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from topology.broker import EmbeddedBroker


@pytest.fixture
def e2e_bootstrap(kafka_bootstrap: str) -> Iterator[str]:
    """A broker for one end-to-end run.

    The embedded broker is cheap to start, so each e2e test gets its own (a stuck
    consumer group or a crashed worker's state cannot leak into the next test).
    With an external cluster or Docker, the session cluster is shared and tests
    only count their own records (unique source and destination names).
    """
    if os.environ.get("CLINSTREAM_TEST_BOOTSTRAP"):
        yield kafka_bootstrap
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap
