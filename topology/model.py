"""The topology: sources, topics, destinations (policies + sinks), triggers.

One YAML file declares the whole pipeline; this pydantic model validates it once
at start-up and derives every topic name the pipeline uses (DESIGN §3).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
PurposeOfUse = Literal[
    "TREAT", "ETREAT", "HPAYMT", "HOPERAT", "HRESCH", "PUBHLTH", "HMARKT", "PATRQT", "COC", "CAREMGT",
]
CleanupPolicy = Literal["delete", "compact", "compact,delete"]

STAGES = ("normalize", "dedupe", "identity", "route")
WorkerRole = Literal["all", "identify", "route"]
# `clinstream run worker --role`: the stages each role runs, in pipeline order.
ROLE_STAGES: dict[str, tuple[str, ...]] = {"all": STAGES, "identify": STAGES[:3], "route": STAGES[3:]}
CANONICAL = "canonical.events"
DEDUPED = "dedup.events"
IDENTIFIED = "identified.events"
MPI_LINKS = "mpi.links"
MPI_PATIENTS = "mpi.patients"
MPI_REVIEW = "mpi.review"
CONSENT = "consent.decisions"
AUDIT = "audit.disclosures"
REDRIVES = "audit.redrives"


class TopologyError(ValueError):
    """The topology file is unreadable or invalid; the message names file and key path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(f"{value!r} must be lower-case letters, digits, '-' or '_' (max 63)")
    return value


class TopicDefaults(_Strict):
    partitions: int = Field(default=4, ge=1, le=1000)
    replication_factor: int = Field(default=1, ge=1, le=10)
    retention_ms: int = Field(default=7 * 24 * 3600 * 1000, ge=-1)


class TopicSpec(_Strict):
    name: str
    partitions: int | None = Field(default=None, ge=1, le=1000)
    replication_factor: int | None = Field(default=None, ge=1, le=10)
    retention_ms: int | None = Field(default=None, ge=-1)
    cleanup_policy: CleanupPolicy = "delete"


class SourceSpec(_Strict):
    name: str
    kind: Literal["mllp", "fhir-http", "file"]
    format: Literal["hl7v2", "fhir"] = "hl7v2"
    options: dict[str, Any] = Field(default_factory=dict)

    _name = field_validator("name")(_check_name)

    @property
    def raw_topic(self) -> str:
        return f"raw.{self.format}.{self.name}"


class SinkSpec(_Strict):
    kind: str = Field(description="registered sink name, e.g. postgres, ndjson, fhir, webhook, mllp")
    options: dict[str, Any] = Field(default_factory=dict)


class TransformSpec(_Strict):
    kind: Literal["pseudonym", "date-shift", "date-year", "zip3", "age-cap", "drop-text"]
    paths: list[str] = Field(
        default_factory=list, description="element paths the transform is limited to; empty = everywhere it applies"
    )
    key_env: str | None = Field(
        default=None, description="env var holding the HMAC key (pseudonym, date-shift); required for those kinds"
    )
    max_shift_days: int = Field(default=30, ge=1, le=365)

    @model_validator(mode="after")
    def _key_needed(self) -> TransformSpec:
        if self.kind in ("pseudonym", "date-shift") and not self.key_env:
            raise ValueError(f"transform {self.kind!r} needs key_env (the env var holding its HMAC key)")
        return self


class DestinationSpec(_Strict):
    name: str
    description: str = ""
    purpose: PurposeOfUse = "TREAT"
    event_types: list[str] = Field(default_factory=lambda: ["*"])
    allow: list[str] = Field(
        default_factory=list, description="FHIR element paths, e.g. Patient.name.family; default deny"
    )
    transforms: list[TransformSpec] = Field(default_factory=list)
    profile: Literal["safe-harbor"] | None = None
    consent_default: Literal["permit", "deny"] = "permit"
    organization: str | None = Field(
        default=None,
        description="recipient organization as a FHIR reference (Organization/x) or identifier value; "
        "matched against Consent provision.actor",
    )
    allow_extensions: list[str] = Field(
        default_factory=list,
        description="extension URLs that may pass (where their element path is allowed); under safe-harbor "
        "only coded/boolean values of these extensions pass",
    )
    sink: SinkSpec | None = None

    _name = field_validator("name")(_check_name)

    @property
    def topic(self) -> str:
        return f"dest.{self.name}"


class TriggerSpec(_Strict):
    name: str
    event_types: list[str] = Field(default_factory=lambda: ["*"])
    conditions: list[str] = Field(
        default_factory=list,
        description="all must hold, e.g. 'Observation.interpretation in [H, HH, A]', 'Encounter.status = finished'",
    )
    match: Literal["all", "any"] = Field(default="all", description="how the conditions combine")
    queue: str
    task_code: str
    task_system: str = Field(default="urn:clinstream:task-code", description="code system of task_code")
    description: str = ""
    priority: Literal["routine", "urgent", "asap", "stat"] = "routine"
    due_in: str = "P1D"

    _queue = field_validator("queue")(_check_name)


class Topology(_Strict):
    name: str
    topic_defaults: TopicDefaults = Field(default_factory=TopicDefaults)
    sources: list[SourceSpec] = Field(default_factory=list)
    topics: list[TopicSpec] = Field(default_factory=list, description="overrides of derived topics")
    destinations: list[DestinationSpec] = Field(default_factory=list)
    triggers: list[TriggerSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> Topology:
        for label, names in (
            ("sources", [s.name for s in self.sources]),
            ("destinations", [d.name for d in self.destinations]),
            ("topics", [t.name for t in self.topics]),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"duplicate {label} name(s): {', '.join(dupes)}")
        return self

    def destination(self, name: str) -> DestinationSpec:
        for d in self.destinations:
            if d.name == name:
                return d
        raise TopologyError(f"no destination named {name!r} (have: {', '.join(self.destination_names)})")

    @property
    def destination_names(self) -> list[str]:
        return [d.name for d in self.destinations]

    def source(self, name: str) -> SourceSpec:
        for s in self.sources:
            if s.name == name:
                return s
        raise TopologyError(f"no source named {name!r}")

    def raw_topics(self, fmt: str | None = None) -> list[str]:
        return [s.raw_topic for s in self.sources if fmt is None or s.format == fmt]

    def derived_topics(self) -> dict[str, TopicSpec]:
        """Every topic the pipeline uses, with the overrides from ``topics:`` applied."""
        names: list[tuple[str, CleanupPolicy]] = [(t, "delete") for t in self.raw_topics()]
        names += [(t, "delete") for t in (CANONICAL, DEDUPED, IDENTIFIED, MPI_LINKS, MPI_REVIEW, AUDIT, REDRIVES)]
        names += [(MPI_PATIENTS, "compact"), (CONSENT, "compact")]
        names += [(d.topic, "delete") for d in self.destinations]
        names += [(f"tasks.{q}", "delete") for q in sorted({t.queue for t in self.triggers})]
        names += [(f"dlq.{s}", "delete") for s in ("ingest", *STAGES, "sink")]
        out: dict[str, TopicSpec] = {n: TopicSpec(name=n, cleanup_policy=cp) for n, cp in names}
        for override in self.topics:
            out[override.name] = override
        return out

    def resolved(self, spec: TopicSpec) -> tuple[int, int, dict[str, str]]:
        """(partitions, replication factor, topic configs) with defaults filled in."""
        d = self.topic_defaults
        configs = {"cleanup.policy": spec.cleanup_policy}
        if spec.cleanup_policy != "compact":
            configs["retention.ms"] = str(spec.retention_ms if spec.retention_ms is not None else d.retention_ms)
        return (
            spec.partitions or d.partitions,
            spec.replication_factor or d.replication_factor,
            configs,
        )


def _key_path(loc: tuple[int | str, ...], data: Any) -> str:
    """Turn a pydantic location into a readable path using names where the list items have them."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int) and isinstance(node, list) and item < len(node):
            node = node[item]
            label = node.get("name") if isinstance(node, dict) else None
            parts.append(f"[{item}]" + (f"({label})" if label else ""))
        else:
            parts.append(f".{item}" if parts else str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts)


def parse_topology(text: str, origin: str = "<string>") -> Topology:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise TopologyError(f"{origin}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict):
        raise TopologyError(f"{origin}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return Topology.model_validate(data)
    except ValidationError as exc:
        lines = [
            f"{origin}: {_key_path(tuple(e['loc']), data) or '(top level)'}: {e['msg']}"
            + (f" (got {e['input']!r})" if e["type"] != "missing" and not isinstance(e["input"], dict) else "")
            for e in exc.errors()
        ]
        raise TopologyError("invalid topology\n  " + "\n  ".join(lines)) from exc


def load_topology(path: str | Path) -> Topology:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise TopologyError(f"{p}: cannot read topology: {exc.strerror}") from exc
    return parse_topology(text, str(p))
