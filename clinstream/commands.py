"""Subcommand registration: thin shells over functions that tests can call directly."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any

Sub = argparse._SubParsersAction  # type: ignore[type-arg]


# Commands whose parser is built alone when they are the one being run (see ``register``).
LEAN_COMMANDS = frozenset({"run"})


def register(sub: Sub, command: str | None = None) -> None:
    """Add the subcommands; with ``command`` in :data:`LEAN_COMMANDS`, only that one.

    The other commands' parsers live with the packages that own them, and importing those
    brings in the benchmark, MPI and routing tooling (numpy, rapidfuzz, the v2 converter,
    rich): 688 modules and 65 MB of RSS before a process does anything. A long-running
    ``run source`` or ``run sink`` process needs none of it, and a deployment runs several.
    """
    if command in LEAN_COMMANDS:
        _run(sub)
        return
    from streams.dlq import add_dlq_parser
    from streams.normalize.hl7v2.cli import add_convert_parser
    from streams.replay import add_replay_parser

    _broker(sub)
    _topology(sub)
    _run(sub)
    _bench(sub)
    _demo(sub)
    add_convert_parser(sub)
    _mpi(sub)
    _audit(sub)
    _preview(sub)
    add_dlq_parser(sub)
    add_replay_parser(sub)


def _topology_arg(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--topology", "-t", required=required, default=os.environ.get("CLINSTREAM_TOPOLOGY"),
                   help="topology YAML (env CLINSTREAM_TOPOLOGY)")


def load(path: str) -> Any:
    from topology.model import TopologyError, load_topology

    try:
        return load_topology(path)
    except TopologyError as exc:
        print(f"clinstream: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


# --- broker -----------------------------------------------------------------

def _broker(sub: Sub) -> None:
    p = sub.add_parser("broker", help="run the embedded in-memory broker alone (demo/test only)")
    p.add_argument("--port", type=int, default=9092)
    p.set_defaults(func=broker_command)


def broker_command(args: argparse.Namespace) -> int:
    from topology.broker import EmbeddedBroker

    with EmbeddedBroker(port=args.port) as broker:
        print(f"embedded broker (in-memory; demo/test only) on {broker.bootstrap}; Ctrl-C stops it", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        try:
            while broker.alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


# --- topology ---------------------------------------------------------------

def _topology(sub: Sub) -> None:
    p = sub.add_parser("topology", help="plan/apply the topology against the cluster")
    tsub = p.add_subparsers(dest="topology_command", required=True)
    for name, helptext in (("plan", "show what apply would change"), ("apply", "create/alter topics")):
        tp = tsub.add_parser(name, help=helptext)
        _topology_arg(tp)
        tp.set_defaults(func=topology_command, apply=name == "apply")
    from topology.acl import add_topology_acl_parser

    add_topology_acl_parser(tsub)
    v = tsub.add_parser("validate", help="validate the topology file only")
    _topology_arg(v)
    v.set_defaults(func=lambda a: (load(a.topology), print(f"{a.topology}: ok"))[0] or 0)


def topology_command(args: argparse.Namespace) -> int:
    from confluent_kafka.admin import AdminClient

    from topology import plan as planner
    from topology.broker import cluster

    topo = load(args.topology)
    with cluster() as settings:
        admin = AdminClient(settings.librdkafka())
        changes = planner.plan(topo, admin)
        for change in changes:
            print(change)
        if not changes:
            print("up to date")
        if args.apply:
            try:
                for line in planner.apply(changes, admin):
                    print(line)
            except planner.TopologyApplyError as exc:
                print(f"clinstream topology apply: {exc}", file=sys.stderr)
                return 1
    return 0


# --- run --------------------------------------------------------------------

def _run(sub: Sub) -> None:
    from topology.model import ROLE_STAGES

    p = sub.add_parser("run", help="run one part of the pipeline (worker, source, sink)")
    rsub = p.add_subparsers(dest="run_command", required=True)
    w = rsub.add_parser("worker", help="the Faust worker (normalize, dedupe, identity, route)")
    _topology_arg(w)
    w.add_argument("--data-dir", default="var/worker")
    w.add_argument("--app-id", default="clinstream-worker")
    w.add_argument("--web-port", type=int, default=None)
    w.add_argument("--store", default="rocksdb://")
    w.add_argument("--role", choices=tuple(ROLE_STAGES), default="all",
                   help="the stages this worker runs: all, identify (normalize, dedupe, identity) or route; "
                        "identify and route workers run side by side, one process each (default: all)")
    w.set_defaults(func=run_worker_command)
    s = rsub.add_parser("source", help="the topology's sources (MLLP, ...)")
    _topology_arg(s)
    s.add_argument("--source", action="append", help="only these sources (repeatable)")
    s.set_defaults(func=run_source_command)
    k = rsub.add_parser("sink", help="deliver one destination's topic to its sink")
    _topology_arg(k)
    k.add_argument("--destination", required=True)
    k.add_argument("--group-id", default=None)
    k.set_defaults(func=run_sink_command)


def _require_cluster() -> Any:
    from topology.settings import KafkaSettings

    settings = KafkaSettings()
    if not settings.bootstrap_servers:
        print("clinstream: KAFKA_BOOTSTRAP_SERVERS is not set (start one with `clinstream broker`, "
              "or use `clinstream demo`)", file=sys.stderr)
        raise SystemExit(2)
    return settings


def run_worker_command(args: argparse.Namespace) -> int:
    from streams.worker import run_worker
    from topology.runtime import tune_process

    tune_process()
    topo = load(args.topology)
    run_worker(topo, _require_cluster(), data_dir=args.data_dir, app_id=args.app_id, web_port=args.web_port,
               store=args.store, role=args.role)
    return 0


def run_source_command(args: argparse.Namespace) -> int:
    import asyncio

    from connectors.sources.run import serve_sources
    from topology.runtime import freeze_startup_heap, tune_process

    tune_process()
    topo = load(args.topology)
    freeze_startup_heap()
    asyncio.run(serve_sources(topo, _require_cluster(), args.source))
    return 0


def run_sink_command(args: argparse.Namespace) -> int:
    from connectors.sinks.runner import sink_main
    from topology.runtime import freeze_startup_heap, tune_process

    tune_process()
    freeze_startup_heap()
    argv = ["--topology", args.topology, "--destination", args.destination]
    if args.group_id:
        argv += ["--group-id", args.group_id]
    return int(sink_main(argv) or 0)


# --- bench ------------------------------------------------------------------

def _bench(sub: Sub) -> None:
    from clinstream.bench_pipeline import add_bench_pipeline_parser
    from connectors.sources.mllp.bench import add_bench_mllp_parser
    from streams.bench import add_bench_stages_parser
    from streams.consume_bench import add_bench_consume_parser
    from streams.identity.bench import add_bench_mpi_parser
    from streams.normalize.hl7v2.bench import add_bench_convert_parser
    from streams.route.bench import add_bench_route_parser

    p = sub.add_parser("bench", help="benchmarks (not tests)")
    bsub = p.add_subparsers(dest="bench_command", required=True)
    add_bench_mllp_parser(bsub)
    add_bench_convert_parser(bsub)
    add_bench_route_parser(bsub)
    add_bench_mpi_parser(bsub)
    add_bench_pipeline_parser(bsub)
    add_bench_stages_parser(bsub)
    add_bench_consume_parser(bsub)


# --- mpi / audit / preview ----------------------------------------------------

def _mpi(sub: Sub) -> None:
    from streams.identity.cli import add_mpi_parsers
    from streams.identity.review import add_review_parser

    mpi = add_mpi_parsers(sub)
    mpi_sub = next(a for a in mpi._actions if isinstance(a, argparse._SubParsersAction))
    add_review_parser(mpi_sub)


def _audit(sub: Sub) -> None:
    from streams.route.audit import add_audit_parser

    p = add_audit_parser(sub)
    p.set_defaults(func=audit_command)


def audit_command(args: argparse.Namespace) -> int:
    import orjson

    from streams.route.audit import audit_disclosures_command
    from streams.topic_reader import TopicNotFound, read_topic
    from topology.model import AUDIT

    settings = _require_cluster()

    def records() -> Any:
        try:
            for msg in read_topic(settings, AUDIT):
                if msg.value():
                    yield orjson.loads(msg.value())
        except TopicNotFound:
            return

    return audit_disclosures_command(args, records)


def _preview(sub: Sub) -> None:
    from streams.route.preview import add_preview_parser

    p = add_preview_parser(sub)
    p.set_defaults(func=preview_command)


def preview_command(args: argparse.Namespace) -> int:
    from streams.normalize.stage import to_event
    from streams.route.preview import preview_command as run_preview

    return run_preview(args, lambda raw, source: to_event(raw, source=source))


# --- demo -------------------------------------------------------------------

def _demo(sub: Sub) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on an embedded broker with the sample ADT feed")
    p.add_argument("--topology", default=None, help="default: topology/examples/demo.yaml")
    p.add_argument("--keep-running", action="store_true", help="keep serving after the summary")
    p.add_argument("--samples", default=None, help="HL7 v2 samples directory")
    p.set_defaults(func=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    from clinstream.demo import run_demo

    return run_demo(args)
