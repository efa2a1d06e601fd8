"""`clinstream run worker`: the Faust worker running every stage of the topology.

normalize (raw.* -> canonical.events) -> dedupe (-> dedup.events) -> identity
(-> identified.events, mpi.*) -> route (-> dest.*, audit.disclosures, tasks.*).

Two agents (``streams.chain``): normalize, dedupe and identity are co-partitioned by
the source patient id and run as one chain on ``raw.*`` (and ``mpi.review``); route
reads the EUID-keyed ``identified.events`` as a chain of its own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faust
import orjson

from streams.app import build_app
from streams.chain import Stage, StageChain
from streams.dedupe.stage import DedupeStage
from streams.identity.engine import MatchEngine
from streams.identity.model import default_model, load_model
from streams.identity.stage import IdentityStage
from streams.normalize.stage import NormalizeStage
from streams.route.stage import RouteStage
from streams.tables import changelog_partition
from topology.health import HealthServer, OpsSettings, broker_check
from topology.lag import LagMonitor
from topology.model import IDENTIFIED, MPI_REVIEW, Topology
from topology.producer import DurableProducer
from topology.settings import KafkaSettings

log = logging.getLogger(__name__)


_MISSING = object()


def _json_key(key: str) -> bytes:
    """A table key as Faust's ``json`` key serializer writes it (Faust uses orjson when installed)."""
    return orjson.dumps(key)


class TableStore:
    """A Faust table as the MPI engine's key-value store, with a read cache and write-behind.

    The engine reads the same blocking keys and entities over and over and writes each
    touched key several times per batch; going through Faust's mapping layers (a
    serializer registry call per key, a bloom probe of every partition's RocksDB for a
    global table, a changelog future per write) cost more than the matching itself.
    Writes are kept in ``_pending`` and flushed once per batch, before the batch's
    outputs are sent: each key goes straight to the RocksDB of its changelog partition
    (``streams.tables.changelog_partition``, where Faust's recovery and global-table
    standby put it too) and its changelog record is queued with the batch's outputs,
    so a crash replays the batch rather than losing index writes. Keys are encoded as
    Faust's key serializer (``json``) does, values are orjson bytes. With a non-RocksDB
    store (``memory://``) it goes through the table's mapping API instead.

    The read cache is bounded; in a multi-worker deployment it may serve another
    worker's stale value until evicted, which can only cost a missed link (a review
    or a new EUID), never a false one.
    """

    def __init__(self, table: Any, cache_entries: int = 500_000) -> None:
        self._table = table
        self._pending: dict[str, Any] = {}
        self._cache: dict[str, Any] = {}
        self._cache_entries = cache_entries
        self._direct: tuple[Any, str, int] | bool | None = False  # resolved on first use (table started)

    def _rocksdb(self) -> tuple[Any, str, int] | None:
        """(store, changelog topic, partitions) when the table's store is RocksDB, else None."""
        if self._direct is False:
            store = self._table.data
            topic = self._table.changelog_topic
            self._direct = ((store, topic.get_topic_name(), topic.partitions or self._table.app.conf.topic_partitions)
                            if hasattr(store, "_db_for_partition") else None)
        return self._direct  # type: ignore[return-value]

    def _read(self, key: str) -> bytes | None:
        direct = self._rocksdb()
        if direct is None:
            return self._table.get(key)
        store, _, partitions = direct
        raw = _json_key(key)
        return store._db_for_partition(changelog_partition(raw, partitions)).get(raw)

    def get(self, key: str, default: Any = None, /) -> Any:
        value = self._pending.get(key, _MISSING)
        if value is _MISSING:
            value = self._cache.get(key, _MISSING)
            if value is _MISSING:
                raw = self._read(key)
                value = None if raw is None else orjson.loads(raw)
                if len(self._cache) >= self._cache_entries:
                    self._cache.clear()
                self._cache[key] = value
        return default if value is None else value

    def put(self, key: str, value: Any) -> None:
        self._pending[key] = value
        self._cache[key] = value

    def flush(self) -> None:
        if not self._pending:
            return
        direct = self._rocksdb()
        if direct is None:
            table = self._table
            for key, value in self._pending.items():
                if value is None:
                    table.pop(key, None)
                else:
                    table[key] = orjson.dumps(value)
        else:
            store, topic, partitions = direct
            queue = self._table.changelog_buffer.append
            for key, value in self._pending.items():
                raw = _json_key(key)
                partition = changelog_partition(raw, partitions)
                db = store._db_for_partition(partition)
                if value is None:
                    db.delete(raw)
                    queue(self._table, topic, partition, raw, None)
                else:
                    data = orjson.dumps(value)
                    db.put(raw, data)
                    queue(self._table, topic, partition, raw, data)
        self._pending.clear()


def stages_for(app: faust.App, topology: Topology, *, mpi_model: str | None = None,
               dedupe_window_s: float = 7 * 24 * 3600.0, mpi_index: str = "global") -> list[Stage]:
    """The four stages. ``mpi_index``: ``global`` replicates the MPI index to every worker (a Faust
    GlobalTable: correct with any number of workers, but every index write is read back by every
    worker); ``local`` keeps it in a partitioned table, correct only while one worker owns every
    partition (a single worker replica), and about 2.5x faster (bench figures in the closing notes)."""
    if mpi_index not in ("global", "local"):
        raise ValueError(f"CLINSTREAM_MPI_INDEX must be 'global' or 'local', got {mpi_index!r}")
    partitions = topology.topic_defaults.partitions
    stages: list[Stage] = []
    raw = topology.raw_topics()
    if raw:
        stages.append(NormalizeStage(input_topics=raw))
    seen = app.Table("dedupe-seen", default=None, partitions=partitions, key_type=str, value_type=str)
    stages.append(DedupeStage(seen=seen, window_s=dedupe_window_s))
    # use_partitioner: a key's changelog partition comes from the key itself, not from the event being
    # processed, so one key's history stays in order on one partition and recovery restores its last value.
    table_type = app.GlobalTable if mpi_index == "global" else app.Table
    index = table_type("mpi-index", default=None, partitions=partitions, key_type=str, use_partitioner=True)
    index.value_serializer = "raw"  # TableStore stores orjson bytes (set before the store is created on first use)
    model = load_model(mpi_model) if mpi_model else default_model()
    stages.append(IdentityStage(engine=MatchEngine(model, store=TableStore(index))))
    consent = app.Table("consent-state", default=None, partitions=partitions, key_type=str, value_type=str)
    stages.append(RouteStage.from_topology(topology, consent=consent))
    return stages


def run_worker(
    topology: Topology,
    settings: KafkaSettings,
    *,
    data_dir: str | Path = "var/worker",
    app_id: str = "clinstream-worker",
    web_port: int | None = None,
    loglevel: str = "warn",
    store: str = "rocksdb://",
    mpi_model: str | None = None,
    mpi_index: str | None = None,
) -> None:
    index_mode = mpi_index or os.environ.get("CLINSTREAM_MPI_INDEX", "global")

    def chains(app: faust.App) -> Sequence[StageChain]:
        return chains_for(stages_for(app, topology, mpi_model=mpi_model, mpi_index=index_mode))

    producer = DurableProducer(settings, linger_ms=5)
    app = build_app(topology, settings, chains, app_id=app_id, data_dir=data_dir, web_port=web_port, store=store,
                    producer=producer)
    health = HealthServer.from_settings(OpsSettings(), {"broker": broker_check(settings.librdkafka())})
    health.set_ready("agents", False)

    @app.task
    async def _agents_started() -> None:
        health.set_ready("agents", True)

    inputs = sorted({t for stage in stages_for_topics(topology) for t in stage})
    lag = LagMonitor(settings, app_id, inputs)
    health.start()
    lag.start()
    try:
        worker = faust.Worker(app, loglevel=loglevel, quiet=True)
        # The terminal spinner lowers the root logger to DEBUG, so every aiokafka debug
        # call builds a LogRecord on the hot path (~8% of the worker's CPU). No spinner.
        worker.spinner = None
        worker.execute_from_commandline()
    finally:
        lag.stop()
        health.stop()
        producer.close()


def chains_for(stages: Sequence[Stage]) -> list[StageChain]:
    """Everything before route in one chain (co-partitioned by source patient id), route in another."""
    before = [s for s in stages if s.name != "route"]
    route = [s for s in stages if s.name == "route"]
    return [StageChain(group) for group in (before, route) if group]


def stages_for_topics(topology: Topology) -> list[list[str]]:
    """The topics the worker consumes (for lag monitoring), without building the stages."""
    return [[*topology.raw_topics(), MPI_REVIEW], [IDENTIFIED]]
