"""A PostgreSQL server for tests, with or without Docker.

Order (first that works wins):

1. ``CLINSTREAM_TEST_PG_DSN``: an external server the caller manages.
2. testcontainers ``PostgresContainer`` when a Docker daemon answers a ping.
3. Local server binaries (``pg_config --bindir``, ``/usr/lib/postgresql/*/bin``, ...):
   ``initdb`` into a temp dir (trust auth, ``-U postgres``, ``--no-sync``) and start it
   on a free 127.0.0.1 port with ``fsync=off``. PostgreSQL refuses to run as root, so
   as root the server runs as the unprivileged system user ``clinstream-pg``
   (created with ``useradd`` on first use) in a directory that user owns.

Missing binaries raise :class:`PostgresUnavailable` saying exactly what to install.
"""

from __future__ import annotations

import os
from pathlib import Path

from connectors.sinks.pg_local import PgServer, PostgresUnavailable, find_pg_bindir, start_local_postgres
from tests.support.docker import docker_available

__all__ = ["PgServer", "PostgresUnavailable", "find_pg_bindir", "start_postgres"]


def _start_container() -> PgServer:
    from testcontainers.postgres import PostgresContainer

    container = PostgresContainer("postgres:16-alpine", driver=None)
    container.start()
    return PgServer(dsn=container.get_connection_url(), backend="testcontainers", _stop=container.stop)


def start_postgres(tmpdir: str | Path) -> PgServer:
    """Get a PostgreSQL server for tests; call ``.stop()`` when done."""
    external = os.environ.get("CLINSTREAM_TEST_PG_DSN")
    if external:
        return PgServer(dsn=external, backend="external")
    if docker_available():
        return _start_container()
    return start_local_postgres(Path(tmpdir))
