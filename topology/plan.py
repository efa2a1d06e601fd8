"""`topology plan` / `topology apply`: diff the derived topics against a cluster and converge it."""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from topology.model import Topology


class TopologyApplyError(RuntimeError):
    """The cluster refused a change; the message names the topic and why."""


@dataclass(frozen=True)
class TopicChange:
    topic: str
    action: str  # create | add-partitions | alter-config | warn
    detail: str
    partitions: int = 0
    replication_factor: int = 1
    configs: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.action:<15} {self.topic:<32} {self.detail}"


def plan(topology: Topology, admin: AdminClient, timeout: float = 10.0) -> list[TopicChange]:
    metadata = admin.list_topics(timeout=timeout)
    existing = metadata.topics
    wanted = topology.derived_topics()
    changes: list[TopicChange] = []
    to_describe: list[str] = []
    for name, spec in sorted(wanted.items()):
        partitions, rf, configs = topology.resolved(spec)
        if name not in existing:
            detail = f"partitions={partitions} rf={rf} " + " ".join(f"{k}={v}" for k, v in configs.items())
            changes.append(TopicChange(name, "create", detail, partitions, rf, configs))
            continue
        have = len(existing[name].partitions)
        if have < partitions:
            changes.append(TopicChange(name, "add-partitions", f"{have} -> {partitions}", partitions))
        elif have > partitions:
            changes.append(
                TopicChange(name, "warn", f"has {have} partitions, topology says {partitions}; Kafka cannot shrink")
            )
        to_describe.append(name)
    if to_describe:
        changes += _config_drift(topology, admin, to_describe, timeout)
    return changes


def _config_drift(
    topology: Topology, admin: AdminClient, names: list[str], timeout: float
) -> list[TopicChange]:
    wanted = topology.derived_topics()
    resources = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in names]
    out: list[TopicChange] = []
    for res, fut in admin.describe_configs(resources).items():
        try:
            current = {k: v.value for k, v in fut.result(timeout=timeout).items()}
        except Exception as exc:  # some brokers do not implement DescribeConfigs fully
            out.append(TopicChange(res.name, "warn", f"cannot describe configs: {exc}"))
            continue
        _, _, configs = topology.resolved(wanted[res.name])
        diff = {k: v for k, v in configs.items() if current.get(k) is not None and current.get(k) != v}
        if diff:
            detail = " ".join(f"{k}: {current.get(k)} -> {v}" for k, v in diff.items())
            out.append(TopicChange(res.name, "alter-config", detail, configs=diff))
    return out


def apply(changes: list[TopicChange], admin: AdminClient, timeout: float = 30.0) -> list[str]:
    """Carry out a plan; returns one line per change done. Raises on the first failure."""
    done: list[str] = []
    creates = [
        NewTopic(c.topic, num_partitions=c.partitions, replication_factor=c.replication_factor, config=c.configs)
        for c in changes
        if c.action == "create"
    ]
    if creates:
        for topic, fut in admin.create_topics(creates, operation_timeout=timeout).items():
            try:
                fut.result(timeout=timeout)
            except Exception as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
            done.append(f"created {topic}")
    grows = [NewPartitions(c.topic, c.partitions) for c in changes if c.action == "add-partitions"]
    if grows:
        for topic, fut in admin.create_partitions(grows, operation_timeout=timeout).items():
            try:
                fut.result(timeout=timeout)
            except KafkaException as exc:
                if exc.args[0].code() == KafkaError._UNSUPPORTED_FEATURE:
                    raise TopologyApplyError(
                        f"{topic}: this broker cannot add partitions (CreatePartitions unsupported; the embedded "
                        "broker is one such) - recreate the topic or use a Kafka cluster"
                    ) from exc
                raise
            done.append(f"partitions added to {topic}")
    for c in changes:
        if c.action != "alter-config":
            continue
        res = ConfigResource(
            ConfigResource.Type.TOPIC,
            c.topic,
            incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in c.configs.items()
            ],
        )
        for fut in admin.incremental_alter_configs([res]).values():
            fut.result(timeout=timeout)
        done.append(f"configs altered on {c.topic}")
    return done


def ensure_topic(admin: AdminClient, name: str, *, partitions: int = 1, replication_factor: int = 1,
                 configs: dict[str, str] | None = None) -> bool:
    """Create one topic outside the topology (the redrive log, a replicated store) unless it exists."""
    if name in admin.list_topics(timeout=10).topics:
        return False
    apply([TopicChange(name, "create", "missing", partitions, replication_factor, configs or {})], admin)
    return True


def ensure_topics(topology: Topology, admin: AdminClient) -> list[str]:
    """Create what is missing (used by `run` and `demo` at start-up)."""
    return apply([c for c in plan(topology, admin) if c.action in ("create", "add-partitions")], admin)
