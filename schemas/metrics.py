"""The one catalogue of Prometheus metrics every clinstream process exports.

Dashboards, alerts and the Helm chart's ServiceMonitor are written against
these names, so a metric that is not declared here does not exist. Names follow
Prometheus conventions: ``clinstream_`` prefix, base units (seconds, bytes),
``_total`` on counters.

Hot paths should not call ``.labels(...)`` per record (a dict lookup under a
lock plus label validation): bind once with :func:`stage`, :func:`source`,
:func:`sink` and keep the returned object, whose attributes are pre-bound
children for the fixed labels and small caches for the open ones.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from functools import cache, lru_cache

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

PREFIX = "clinstream_"

# Stage work is sub-millisecond to a few hundred ms (an MPI lookup); the default
# buckets start at 5 ms and would hide the whole interesting range.
PROCESSING_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# received_at -> delivered crosses four agents and a sink: tens of ms to minutes
# when a destination is down and the sink is retrying.
END_TO_END_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)

# --- stream stages (normalize, dedupe, identity, route) ---------------------
STAGE_RECORDS_IN = Counter(
    "clinstream_stage_records_in_total", "Records a stage consumed.", ["stage", "source"]
)
STAGE_RECORDS_OUT = Counter(
    "clinstream_stage_records_out_total", "Records a stage forwarded.", ["stage", "destination"]
)
STAGE_RECORDS_DROPPED = Counter(
    "clinstream_stage_records_dropped_total",
    "Records a stage dropped on purpose (e.g. duplicates, filtered event types).",
    ["stage", "reason"],
)
STAGE_RECORDS_DLQ = Counter(
    "clinstream_stage_records_dlq_total", "Records a stage sent to its dead-letter topic.", ["stage", "reason"]
)
STAGE_PROCESSING_SECONDS = Histogram(
    "clinstream_stage_processing_seconds",
    "Time a stage spent on one record.",
    ["stage"],
    buckets=PROCESSING_BUCKETS,
)
END_TO_END_LATENCY_SECONDS = Histogram(
    "clinstream_end_to_end_latency_seconds",
    "From received_at (source accepted the message) to delivery in the destination.",
    ["destination"],
    buckets=END_TO_END_BUCKETS,
)
CONSUMER_LAG_RECORDS = Gauge(
    "clinstream_consumer_lag_records",
    "High watermark minus committed offset per consumer group and partition.",
    ["group", "topic", "partition"],
)

# --- sources -----------------------------------------------------------------
SOURCE_RECORDS = Counter(
    "clinstream_source_records_total",
    "Messages a source received, by outcome (accepted, rejected, error).",
    ["source", "outcome"],
)
INGEST_BYTES = Counter("clinstream_ingest_bytes_total", "Raw bytes a source persisted to Kafka.", ["source"])
MLLP_CONNECTIONS = Gauge("clinstream_mllp_connections", "Open MLLP connections.", ["source"])
MLLP_ACKS = Counter(
    "clinstream_mllp_acks_total", "HL7 acknowledgements sent, by MSA-1 code (AA, AE, AR).", ["source", "code"]
)

# --- identity, consent, disclosure ------------------------------------------
MPI_DECISIONS = Counter(
    "clinstream_mpi_decisions_total", "MPI match decisions by band (match, review, non-match, new).", ["band"]
)
CONSENT_DENIALS = Counter(
    "clinstream_consent_denials_total", "Events withheld from a destination by consent.", ["destination", "reason"]
)
DISCLOSURES = Counter(
    "clinstream_disclosures_total", "Disclosures recorded on audit.disclosures.", ["destination", "purpose"]
)
REPLICA_RECORDS_APPLIED = Counter(
    "clinstream_replica_records_applied_total",
    "Records a replicated store (the MPI index) applied from its topic, this worker's and others'.",
    ["topic"],
)
REPLICA_UNECHOED_WRITES = Gauge(
    "clinstream_replica_unechoed_records",
    "This worker's replicated-store writes its topic has not echoed back yet (replication backlog).",
    ["topic"],
)

# --- sinks ------------------------------------------------------------------
SINK_RECORDS = Counter(
    "clinstream_sink_records_total",
    "Records a sink finished, by outcome (delivered, skipped, dlq).",
    ["destination", "outcome"],
)
SINK_RETRIES = Counter("clinstream_sink_retries_total", "Delivery attempts retried.", ["destination"])
SINK_CIRCUIT_STATE = Gauge(
    "clinstream_sink_circuit_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.", ["destination"]
)

CATALOGUE: tuple[MetricWrapperBase, ...] = (
    STAGE_RECORDS_IN,
    STAGE_RECORDS_OUT,
    STAGE_RECORDS_DROPPED,
    STAGE_RECORDS_DLQ,
    STAGE_PROCESSING_SECONDS,
    END_TO_END_LATENCY_SECONDS,
    CONSUMER_LAG_RECORDS,
    SOURCE_RECORDS,
    INGEST_BYTES,
    MLLP_CONNECTIONS,
    MLLP_ACKS,
    MPI_DECISIONS,
    CONSENT_DENIALS,
    DISCLOSURES,
    REPLICA_RECORDS_APPLIED,
    REPLICA_UNECHOED_WRITES,
    SINK_RECORDS,
    SINK_RETRIES,
    SINK_CIRCUIT_STATE,
)


class CircuitState(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


def family_names() -> set[str]:
    """Metric family names as exposed (counters with ``_total``)."""
    out: set[str] = set()
    for metric in CATALOGUE:
        for family in metric.describe():
            out.add(family.name + "_total" if family.type == "counter" else family.name)
    return out


def sample_names() -> set[str]:
    """Every series name a scrape can contain: families plus ``_bucket``/``_sum``/``_count``/``_created``."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    out: set[str] = set()
    for metric in CATALOGUE:
        for family in metric.describe():
            out.update(family.name + s for s in suffixes[family.type])
    return out


def registered_in(registry: CollectorRegistry = REGISTRY) -> set[str]:
    """Names of catalogue families a registry actually exports (to prove they are registered)."""
    return {m.name for m in registry.collect() if m.name.startswith(PREFIX)}


# --- pre-bound helpers --------------------------------------------------------


def _epoch(ts: datetime | float | str) -> float | None:
    """Seconds since the epoch from a datetime, a number, or an ISO 8601 instant (the envelope's received_at).

    None when it is not an instant: a de-identified destination gets received_at generalised to a
    year, and then there is no latency to observe (never a reason to fail a delivery).
    """
    if isinstance(ts, datetime):
        return ts.timestamp()
    if isinstance(ts, str):
        if len(ts) < 19:
            return None
        try:
            return datetime.fromisoformat(ts).timestamp()
        except ValueError:
            return None
    return float(ts)


@dataclass
class StageMetrics:
    """Children of the stage metrics bound to one stage; get one with :func:`stage`."""

    name: str
    _seconds: Histogram = field(init=False, repr=False)
    _in: dict[str, Counter] = field(default_factory=dict, repr=False)
    _out: dict[str, Counter] = field(default_factory=dict, repr=False)
    _dropped: dict[str, Counter] = field(default_factory=dict, repr=False)
    _dlq: dict[str, Counter] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._seconds = STAGE_PROCESSING_SECONDS.labels(stage=self.name)

    # A plain dict miss -> labels() once; later calls are one dict lookup.
    def records_in(self, source: str, n: int = 1) -> None:
        child = self._in.get(source)
        if child is None:
            child = self._in[source] = STAGE_RECORDS_IN.labels(stage=self.name, source=source)
        child.inc(n)

    def records_out(self, destination: str, n: int = 1) -> None:
        child = self._out.get(destination)
        if child is None:
            child = self._out[destination] = STAGE_RECORDS_OUT.labels(stage=self.name, destination=destination)
        child.inc(n)

    def dropped(self, reason: str, n: int = 1) -> None:
        child = self._dropped.get(reason)
        if child is None:
            child = self._dropped[reason] = STAGE_RECORDS_DROPPED.labels(stage=self.name, reason=reason)
        child.inc(n)

    def dlq(self, reason: str, n: int = 1) -> None:
        child = self._dlq.get(reason)
        if child is None:
            child = self._dlq[reason] = STAGE_RECORDS_DLQ.labels(stage=self.name, reason=reason)
        child.inc(n)

    def observe_seconds(self, seconds: float) -> None:
        self._seconds.observe(seconds)

    @contextmanager
    def timer(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._seconds.observe(time.perf_counter() - start)


@dataclass
class SourceMetrics:
    """Children of the source metrics bound to one source; get one with :func:`source`."""

    name: str
    _outcomes: dict[str, Counter] = field(default_factory=dict, repr=False)
    _acks: dict[str, Counter] = field(default_factory=dict, repr=False)
    _bytes: Counter = field(init=False, repr=False)
    _connections: Gauge = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._bytes = INGEST_BYTES.labels(source=self.name)
        self._connections = MLLP_CONNECTIONS.labels(source=self.name)

    def record(self, outcome: str, n: int = 1) -> None:
        child = self._outcomes.get(outcome)
        if child is None:
            child = self._outcomes[outcome] = SOURCE_RECORDS.labels(source=self.name, outcome=outcome)
        child.inc(n)

    def accepted(self, nbytes: int) -> None:
        """One message durably in Kafka: counts it and its raw size."""
        self.record("accepted")
        self._bytes.inc(nbytes)

    def rejected(self) -> None:
        self.record("rejected")

    def ack(self, code: str) -> None:
        child = self._acks.get(code)
        if child is None:
            child = self._acks[code] = MLLP_ACKS.labels(source=self.name, code=code)
        child.inc()

    def connection_opened(self) -> None:
        self._connections.inc()

    def connection_closed(self) -> None:
        self._connections.dec()


@dataclass
class SinkMetrics:
    """Children of the sink metrics bound to one destination; get one with :func:`sink`."""

    destination: str
    _outcomes: dict[str, Counter] = field(default_factory=dict, repr=False)
    _retries: Counter = field(init=False, repr=False)
    _circuit: Gauge = field(init=False, repr=False)
    _latency: Histogram = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._retries = SINK_RETRIES.labels(destination=self.destination)
        self._circuit = SINK_CIRCUIT_STATE.labels(destination=self.destination)
        self._latency = END_TO_END_LATENCY_SECONDS.labels(destination=self.destination)
        self._circuit.set(CircuitState.CLOSED)

    def record(self, outcome: str, n: int = 1) -> None:
        child = self._outcomes.get(outcome)
        if child is None:
            child = self._outcomes[outcome] = SINK_RECORDS.labels(destination=self.destination, outcome=outcome)
        child.inc(n)

    def delivered(self, received_at: datetime | float | str | None = None, delivered_at: float | None = None) -> None:
        """One record delivered; with ``received_at`` also observes end-to-end latency."""
        self.record("delivered")
        epoch = _epoch(received_at) if received_at is not None else None
        if epoch is not None:
            now = time.time() if delivered_at is None else delivered_at
            self._latency.observe(max(0.0, now - epoch))

    def delivered_batch(
        self, received_ats: Iterable[datetime | float | str | None], delivered_at: float | None = None
    ) -> None:
        """A committed batch: one count per record, one latency observation per known received_at."""
        now = time.time() if delivered_at is None else delivered_at
        n = 0
        for received_at in received_ats:
            n += 1
            epoch = _epoch(received_at) if received_at is not None else None
            if epoch is not None:
                self._latency.observe(max(0.0, now - epoch))
        if n:
            self.record("delivered", n)

    def dlq(self, n: int = 1) -> None:
        self.record("dlq", n)

    def retry(self) -> None:
        self._retries.inc()

    def circuit(self, state: CircuitState) -> None:
        self._circuit.set(int(state))


@cache
def stage(name: str) -> StageMetrics:
    return StageMetrics(name)


@cache
def source(name: str) -> SourceMetrics:
    return SourceMetrics(name)


@cache
def sink(destination: str) -> SinkMetrics:
    return SinkMetrics(destination)


@lru_cache(maxsize=1024)
def _mpi_child(band: str) -> Counter:
    return MPI_DECISIONS.labels(band=band)


@lru_cache(maxsize=4096)
def _consent_child(destination: str, reason: str) -> Counter:
    return CONSENT_DENIALS.labels(destination=destination, reason=reason)


@lru_cache(maxsize=4096)
def _disclosure_child(destination: str, purpose: str) -> Counter:
    return DISCLOSURES.labels(destination=destination, purpose=purpose)


def mpi_decision(band: str) -> None:
    _mpi_child(band).inc()


def consent_denied(destination: str, reason: str) -> None:
    _consent_child(destination, reason).inc()


def disclosure(destination: str, purpose: str) -> None:
    _disclosure_child(destination, purpose).inc()


# --- consumer lag -------------------------------------------------------------

TopicPartition = tuple[str, int]


def lag_from_watermarks(
    committed: Mapping[TopicPartition, int | None],
    high_watermarks: Mapping[TopicPartition, int],
    low_watermarks: Mapping[TopicPartition, int] | None = None,
) -> dict[TopicPartition, int]:
    """Records still to consume per partition: high watermark minus committed offset.

    Kafka's committed offset is the *next* offset to read, so no off-by-one.
    A partition without a commit (missing, ``None`` or negative like librdkafka's
    OFFSET_INVALID -1001) counts from the low watermark when known (what
    ``auto.offset.reset=earliest`` would read), else from 0. Retention can
    delete past a stale commit; lag is then capped at what still exists. Never
    negative: a commit can be seen ahead of a stale high-watermark read.
    """
    lows = low_watermarks or {}
    out: dict[TopicPartition, int] = {}
    for tp, high in high_watermarks.items():
        low = lows.get(tp, 0)
        offset = committed.get(tp)
        start = low if offset is None or offset < 0 else max(offset, low)
        out[tp] = max(0, high - start)
    return out


def set_consumer_lag(group: str, lags: Mapping[TopicPartition, int]) -> None:
    for (topic, partition), lag in lags.items():
        CONSUMER_LAG_RECORDS.labels(group=group, topic=topic, partition=str(partition)).set(lag)
