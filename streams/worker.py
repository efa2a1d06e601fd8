"""`clinstream run worker`: the Faust worker running every stage of the topology.

normalize (raw.* -> canonical.events) -> dedupe (-> dedup.events) -> identity
(-> identified.events, mpi.*) -> route (-> dest.*, audit.disclosures, tasks.*).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faust

from streams.app import Stage, build_app
from streams.dedupe.stage import DedupeStage
from streams.identity.engine import MatchEngine
from streams.identity.model import default_model, load_model
from streams.identity.stage import IdentityStage
from streams.normalize.stage import NormalizeStage
from streams.route.stage import RouteStage
from topology.health import HealthServer, OpsSettings, broker_check
from topology.lag import LagMonitor
from topology.model import CANONICAL, DEDUPED, IDENTIFIED, MPI_REVIEW, Topology
from topology.settings import KafkaSettings

log = logging.getLogger(__name__)


class TableStore:
    """A Faust table as the MPI engine's key-value store (``get``/``put`` of JSON values)."""

    def __init__(self, table: Any) -> None:
        self._table = table

    def get(self, key: str, default: Any = None, /) -> Any:
        return self._table.get(key, default)

    def put(self, key: str, value: Any) -> None:
        self._table[key] = value


def stages_for(app: faust.App, topology: Topology, *, mpi_model: str | None = None,
               dedupe_window_s: float = 7 * 24 * 3600.0) -> list[Stage]:
    partitions = topology.topic_defaults.partitions
    stages: list[Stage] = []
    raw = topology.raw_topics()
    if raw:
        stages.append(NormalizeStage(input_topics=raw))
    seen = app.Table("dedupe-seen", default=None, partitions=partitions, key_type=str, value_type=str)
    stages.append(DedupeStage(seen=seen, window_s=dedupe_window_s))
    # use_partitioner: a key's changelog partition comes from the key itself, not from the event being
    # processed, so one key's history stays in order on one partition and recovery restores its last value.
    index = app.GlobalTable("mpi-index", default=None, partitions=partitions, key_type=str, use_partitioner=True)
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
) -> None:
    def stages(app: faust.App) -> Sequence[Stage]:
        return stages_for(app, topology, mpi_model=mpi_model)

    app = build_app(topology, settings, stages, app_id=app_id, data_dir=data_dir, web_port=web_port, store=store)
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


def stages_for_topics(topology: Topology) -> list[list[str]]:
    """The input topics of every stage (for lag monitoring), without building the stages."""
    return [topology.raw_topics(), [CANONICAL], [DEDUPED, MPI_REVIEW], [IDENTIFIED]]
