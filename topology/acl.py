"""`topology acl`: least-privilege Kafka ACLs derived from the topology.

Each principal gets exactly what its process does and nothing more:

- the worker (all four agents in one Faust app) reads raw and internal topics and
  writes internal, destination, task, audit and DLQ topics, plus its own Faust
  internals (changelogs, repartition and assignor topics, all prefixed by the app id);
- each source writes its own ``raw.<format>.<source>`` topic and ``dlq.ingest``;
- each destination's sink group ``clinstream-sink-<destination>`` and the team's
  own group ``team-<destination>`` read ``dest.<destination>`` only (the sink also
  writes ``dlq.sink``), so one team can never read another team's projection.

Principal names equal their group names; ``--principal-prefix`` picks the
authenticator's namespace (``User:`` for SASL/SCRAM and mTLS).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Literal

from topology.model import (
    AUDIT,
    CANONICAL,
    CONSENT,
    DEDUPED,
    IDENTIFIED,
    MPI_LINKS,
    MPI_PATIENTS,
    MPI_REVIEW,
    REDRIVES,
    STAGES,
    Topology,
    TopologyError,
    load_topology,
)

ResourceType = Literal["topic", "group", "cluster", "transactional-id"]
PatternType = Literal["literal", "prefixed"]

WORKER = "clinstream-worker"
OPERATOR = "clinstream-operator"
# `clinstream run worker --app-id` default: Faust group id and internal-topic prefix.
DEFAULT_APP_ID = "clinstream-worker"


def worker_group_id(app_id: str, role: str = "all") -> str:
    """The Faust app id, and so the consumer group, of a worker of ``role`` (``run worker --role``).

    Route workers are a group of their own (``streams.worker``); their internal topics still start
    with ``<app_id>-``."""
    return f"{app_id}-route" if role == "route" else app_id


def sink_principal(destination: str) -> str:
    return f"clinstream-sink-{destination}"


def team_principal(destination: str) -> str:
    return f"team-{destination}"


def source_principal(source: str) -> str:
    return f"clinstream-source-{source}"


@dataclass(frozen=True)
class AclEntry:
    principal: str
    operations: tuple[str, ...]
    resource_type: ResourceType
    resource_name: str
    pattern: PatternType = "literal"

    def command(self, bootstrap: str = "$KAFKA_BOOTSTRAP_SERVERS") -> str:
        ops = " ".join(f"--operation {op}" for op in self.operations)
        if self.resource_type == "cluster":
            resource = "--cluster"
        else:
            resource = f"--{self.resource_type} {self.resource_name}"
        pattern = " --resource-pattern-type prefixed" if self.pattern == "prefixed" else ""
        return (
            f"kafka-acls.sh --bootstrap-server {bootstrap} --command-config $KAFKA_ADMIN_CONFIG "
            f"--add --allow-principal {self.principal} {ops} {resource}{pattern}"
        )

    def row(self) -> tuple[str, str, str, str, str]:
        return (self.principal, ",".join(self.operations), self.resource_type, self.resource_name, self.pattern)


_READ = ("Read", "Describe")
_WRITE = ("Write", "Describe")


def acl_entries(
    topology: Topology, principal_prefix: str = "User:", app_id: str = DEFAULT_APP_ID
) -> list[AclEntry]:
    p = principal_prefix
    worker = p + WORKER
    out: list[AclEntry] = []

    # Worker: consumes raw + internal, produces internal + outputs.
    inputs = [*topology.raw_topics(), CANONICAL, DEDUPED, IDENTIFIED, MPI_LINKS, MPI_PATIENTS, MPI_REVIEW, CONSENT]
    outputs = [CANONICAL, DEDUPED, IDENTIFIED, MPI_LINKS, MPI_PATIENTS, MPI_REVIEW, AUDIT, CONSENT]
    outputs += [d.topic for d in topology.destinations]
    outputs += [f"tasks.{q}" for q in sorted({t.queue for t in topology.triggers})]
    outputs += [f"dlq.{s}" for s in STAGES]
    for topic in dict.fromkeys(inputs):
        out.append(AclEntry(worker, _READ, "topic", topic))
    for topic in dict.fromkeys(outputs):
        out.append(AclEntry(worker, _WRITE, "topic", topic))
    # Faust creates and owns "<app_id>-..." topics (table changelogs, repartitions).
    out.append(AclEntry(worker, ("All",), "topic", f"{app_id}-", "prefixed"))
    out.append(AclEntry(worker, ("Read",), "group", app_id))
    out.append(AclEntry(worker, ("Read",), "group", worker_group_id(app_id, "route")))
    out.append(AclEntry(worker, ("IdempotentWrite",), "cluster", "kafka-cluster"))

    for src in topology.sources:
        principal = p + source_principal(src.name)
        out.append(AclEntry(principal, _WRITE, "topic", src.raw_topic))
        out.append(AclEntry(principal, _WRITE, "topic", "dlq.ingest"))
        # Sources use an idempotent producer (DESIGN §1); brokers before 2.8 check this on the cluster.
        out.append(AclEntry(principal, ("IdempotentWrite",), "cluster", "kafka-cluster"))

    for dest in topology.destinations:
        readers = [team_principal(dest.name)]
        if dest.sink is not None:
            readers.insert(0, sink_principal(dest.name))
        for name in readers:
            out.append(AclEntry(p + name, _READ, "topic", dest.topic))
            out.append(AclEntry(p + name, ("Read",), "group", name))
        if dest.sink is not None:
            out.append(AclEntry(p + sink_principal(dest.name), _WRITE, "topic", "dlq.sink"))

    # Operators (clinstream dlq/replay/audit/mpi review): read the DLQs and the logs, redrive to the
    # origin topics (raw and internal), record redrives, answer reviews, backfill destinations.
    operator = p + OPERATOR
    out.append(AclEntry(operator, _READ, "topic", "dlq.", "prefixed"))
    for topic in (AUDIT, REDRIVES, MPI_REVIEW, CANONICAL, DEDUPED, IDENTIFIED, CONSENT):
        out.append(AclEntry(operator, _READ, "topic", topic))
    for topic in dict.fromkeys([*topology.raw_topics(), CANONICAL, DEDUPED, IDENTIFIED, REDRIVES, MPI_REVIEW, AUDIT,
                                *(d.topic for d in topology.destinations)]):
        out.append(AclEntry(operator, _WRITE, "topic", topic))
    out.append(AclEntry(operator, ("Read",), "group", "clinstream-reader-", "prefixed"))
    return out


def acls_for(topology: Topology, principal_prefix: str = "User:", app_id: str = DEFAULT_APP_ID) -> list[str]:
    """kafka-acls.sh command lines granting the topology's least privileges."""
    return [e.command() for e in acl_entries(topology, principal_prefix, app_id)]


def format_table(entries: list[AclEntry]) -> str:
    header = ("PRINCIPAL", "OPERATIONS", "RESOURCE", "NAME", "PATTERN")
    rows = [header, *(e.row() for e in entries)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def add_topology_acl_parser(topology_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = topology_subparsers.add_parser(
        "acl", help="print least-privilege Kafka ACLs for the topology's principals and groups"
    )
    parser.add_argument("--topology", required=True, help="topology YAML file")
    parser.add_argument("--principal-prefix", default="User:", help="principal type prefix (default: User:)")
    parser.add_argument(
        "--app-id", default=DEFAULT_APP_ID, help=f"Faust app id of the worker (default: {DEFAULT_APP_ID})"
    )
    parser.add_argument(
        "--format", choices=("commands", "table"), default="commands", help="kafka-acls.sh lines or a table"
    )
    parser.set_defaults(func=acl_command)
    return parser


def acl_command(args: argparse.Namespace) -> int:
    try:
        topology = load_topology(args.topology)
    except TopologyError as exc:
        print(exc, file=sys.stderr)
        return 2
    entries = acl_entries(topology, args.principal_prefix, args.app_id)
    if args.format == "table":
        print(format_table(entries))
    else:
        print("\n".join(e.command() for e in entries))
    return 0
