"""Shared fixtures: a Kafka cluster and a PostgreSQL server per test session, fresh names per test.

Backends are chosen in tests/support (external env var → Docker via testcontainers →
embedded broker / local PostgreSQL binaries), so the same tests run anywhere.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.support.kafka import kafka_bootstrap as _start_kafka
from tests.support.postgres import start_postgres


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """bootstrap.servers of a Kafka-protocol cluster shared by the session."""
    server = _start_kafka()
    try:
        yield server.bootstrap
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DSN of a PostgreSQL server shared by the session (superuser, database ``postgres``)."""
    server = start_postgres(tmp_path_factory.mktemp("postgres"))
    try:
        yield server.dsn
    finally:
        server.stop()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Factory of fresh names for topics, groups, tables: ``unique_name("dest")`` → ``dest-<test>-<hex>``.

    Fresh group ids matter on the embedded broker: a group whose member died can stay stuck.
    Names are lower-case ``[a-z0-9_-]`` and at most 48 characters, valid as destination,
    topic, group and (after ``-``→``_``) SQL identifiers.
    """

    test = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:16].strip("-") or "t"

    def make(prefix: str = "t") -> str:
        return f"{prefix}-{test}-{uuid.uuid4().hex[:10]}"[:48]

    return make


@pytest.fixture
def fresh_pg_dsn(pg_dsn: str, unique_name: Callable[[str], str]) -> str:
    """DSN of a new, empty database on the session server (for tests that need isolation)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    db = unique_name("db").replace("-", "_")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for attempt in range(20):
            try:
                conn.execute(f'CREATE DATABASE "{db}"')
                break
            except psycopg.errors.ObjectInUse:
                # "source database template1 is being accessed by other users": another CREATE DATABASE
                # on a shared server (CLINSTREAM_TEST_PG_DSN) holds it for a moment.
                if attempt == 19:
                    raise
                time.sleep(0.25)
    params = conninfo_to_dict(pg_dsn)
    params["dbname"] = db
    return make_conninfo(**params)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", default=False,
                     help="run the crash tests at soak size (more messages, more kills)")


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--soak"))
