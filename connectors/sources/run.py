"""`clinstream run source`: run the topology's sources in one asyncio process until SIGTERM."""

from __future__ import annotations

import asyncio
import json
import logging
import signal

from connectors.sources.base import Source, create_source
from topology.health import HealthServer, OpsSettings, broker_check
from topology.model import Topology
from topology.settings import KafkaSettings

log = logging.getLogger(__name__)


async def serve_sources(topology: Topology, settings: KafkaSettings, names: list[str] | None = None,
                        ready_line: bool = True) -> None:
    specs = [s for s in topology.sources if not names or s.name in names]
    if not specs:
        raise SystemExit(f"no sources to run (topology has: {', '.join(s.name for s in topology.sources)})")
    sources: list[Source] = [create_source(spec, settings) for spec in specs]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    health = HealthServer.from_settings(OpsSettings(), {"broker": broker_check(settings.librdkafka())})
    for src in sources:
        health.add_check(f"source:{src.name}", lambda src=src: bool(src.health().get("listening", True)))
    health.start()
    for src in sources:
        await src.start()
    if ready_line:
        # one machine-readable line so a supervisor (demo, tests) learns the ports
        print(json.dumps({"ready": {s.name: s.health() for s in sources}, "ops_port": health.port}), flush=True)
    await stop.wait()
    for src in sources:
        await src.stop()
    health.stop()
