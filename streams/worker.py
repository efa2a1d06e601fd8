"""`clinstream run worker`: the Faust worker running every stage of the topology."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import faust

from streams.app import Stage, build_app
from streams.normalize.stage import NormalizeStage
from topology.model import Topology
from topology.settings import KafkaSettings

log = logging.getLogger(__name__)


def stages_for(topology: Topology) -> list[Stage]:
    from streams.route.stage import RouteStage

    raw = topology.raw_topics()
    stages: list[Stage] = []
    if raw:
        stages.append(NormalizeStage(input_topics=raw))
    stages.append(RouteStage.from_topology(topology))
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
) -> None:
    def stages(_app: faust.App) -> Sequence[Stage]:
        return stages_for(topology)

    app, _stats = build_app(topology, settings, stages, app_id=app_id, data_dir=data_dir, web_port=web_port,
                            store=store)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
