"""`clinstream run worker`: the Faust worker running every stage of the topology.

normalize (raw.* -> canonical.events) -> dedupe (-> dedup.events) -> identity
(-> identified.events, mpi.*) -> route (-> dest.*, audit.disclosures, tasks.*).

Two agents (``streams.chain``): normalize, dedupe and identity are co-partitioned by
the source patient id and run as one chain on ``raw.*`` (and ``mpi.review``); route
reads the EUID-keyed ``identified.events`` as a chain of its own.

Roles: a worker runs both chains (``all``), or one of them (``identify``, ``route``), so the
two can run in processes of their own. A worker process runs its chains on one core (the
interpreter lock), and under load the identify chain alone keeps most of that core busy; a
route worker beside it moves route onto another core, and route workers scale out without
each holding the MPI index. A route worker is a consumer group of its own
(``topology.acl.worker_group_id``): in one group the leader's assignor consults its own
tables for standby and changelog placement, and the two roles hold different tables. Its
consent table keeps the changelog topic of the worker's app id, so switching roles keeps
consent state; the route group's offsets on ``identified.events`` start afresh (``earliest``:
destinations see repeats, idempotent by event id).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import faust

from streams.app import AgentBatchSettings, build_app
from streams.chain import Stage, StageChain
from streams.dedupe.stage import DedupeStage
from streams.identity.engine import KeyValueStore, MatchEngine
from streams.identity.model import default_model, load_model
from streams.identity.stage import IdentityStage
from streams.normalize.stage import NormalizeStage
from streams.replicated_store import ReplicatedStore
from streams.route.stage import RouteStage
from streams.state import StateStoreSettings
from streams.tables import PartitionedTableView
from topology.acl import worker_group_id
from topology.health import HealthServer, OpsSettings, broker_check
from topology.lag import LagMonitor
from topology.model import IDENTIFIED, MPI_REVIEW, ROLE_STAGES, Topology, WorkerRole
from topology.producer import BatchProducer, DurableProducer
from topology.runtime import freeze_startup_heap
from topology.settings import KafkaSettings

log = logging.getLogger(__name__)


def mpi_index_topic(app_id: str) -> str:
    """The compacted topic that replicates the MPI index (Faust-style ``<app_id>-`` prefix: the
    worker's ACLs already own that prefix)."""
    return f"{app_id}-mpi-index-changelog"


def stages_for(app: faust.App, topology: Topology, index: KeyValueStore | None, *, mpi_model: str | None = None,
               dedupe_window_s: float = 7 * 24 * 3600.0, state: StateStoreSettings | None = None,
               role: WorkerRole = "all") -> list[Stage]:
    """The stages of ``role``; ``index`` is the MPI index (a ``ReplicatedStore`` in the worker),
    needed by every role but ``route``."""
    partitions = topology.topic_defaults.partitions
    wanted = ROLE_STAGES[role]
    stages: list[Stage] = []
    state = state or StateStoreSettings()
    raw = topology.raw_topics()
    if raw and "normalize" in wanted:
        stages.append(NormalizeStage(input_topics=raw))
    if "dedupe" in wanted:
        seen = app.Table("dedupe-seen", default=None, partitions=partitions, key_type=str, value_type=str,
                         options=state.faust_table_options())
        stages.append(DedupeStage(seen=PartitionedTableView(seen), window_s=dedupe_window_s))
    if "identity" in wanted:
        if index is None:
            raise ValueError(f"the {role!r} role runs identity: it needs the MPI index")
        model = load_model(mpi_model) if mpi_model else default_model()
        stages.append(IdentityStage(engine=MatchEngine(model, store=index)))
    if "route" in wanted:
        consent = app.Table("consent-state", default=None, partitions=partitions, key_type=str, value_type=str,
                            options=state.faust_table_options())
        stages.append(RouteStage.from_topology(topology, consent=PartitionedTableView(consent)))
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
    role: WorkerRole = "all",
) -> None:
    d = topology.topic_defaults
    state = StateStoreSettings()  # validated before anything starts: a bad CLINSTREAM_STATE_* names its key
    batch = AgentBatchSettings()  # likewise CLINSTREAM_BATCH_*
    index: ReplicatedStore | None = None
    if "identity" in ROLE_STAGES[role]:
        index = ReplicatedStore(settings, mpi_index_topic(app_id), Path(data_dir) / "mpi-index",
                                replication_factor=d.replication_factor, state=state)
        index.start()  # the whole index, before the first event

    def chains(app: faust.App) -> Sequence[StageChain]:
        return chains_for(stages_for(app, topology, index, mpi_model=mpi_model, state=state, role=role))

    producer = BatchProducer(settings, linger_ms=5)
    changelog_producer = DurableProducer(settings, linger_ms=5)
    app = build_app(topology, settings, chains, app_id=worker_group_id(app_id, role), changelog_prefix=app_id,
                    data_dir=data_dir, web_port=web_port, store=store, producer=producer,
                    changelog_producer=changelog_producer, batch=batch)
    health = HealthServer.from_settings(OpsSettings(), {"broker": broker_check(settings.librdkafka())})
    health.set_ready("agents", False)

    @app.task
    async def _agents_started() -> None:
        health.set_ready("agents", True)
        freeze_startup_heap()  # Faust, tables and stages are built: keep them out of the collector's scans

    inputs = sorted({t for stage in stages_for_topics(topology, role) for t in stage})
    lag = LagMonitor(settings, worker_group_id(app_id, role), inputs)
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
        changelog_producer.close()
        if index is not None:
            index.stop()


def chains_for(stages: Sequence[Stage]) -> list[StageChain]:
    """Everything before route in one chain (co-partitioned by source patient id), route in another."""
    before = [s for s in stages if s.name != "route"]
    route = [s for s in stages if s.name == "route"]
    return [StageChain(group) for group in (before, route) if group]


def stages_for_topics(topology: Topology, role: WorkerRole = "all") -> list[list[str]]:
    """The topics a worker of ``role`` consumes (for lag monitoring), without building the stages."""
    chains = []
    if "identity" in ROLE_STAGES[role]:
        chains.append([*topology.raw_topics(), MPI_REVIEW])
    if "route" in ROLE_STAGES[role]:
        chains.append([IDENTIFIED])
    return chains
