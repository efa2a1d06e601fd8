"""The metric catalogue: names, registration, pre-bound helpers, lag maths."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY, generate_latest

from schemas import metrics as m

NAME_RE = re.compile(r"^clinstream_[a-z0-9_]+$")
UNITS = ("_seconds", "_bytes_total", "_records", "_total", "_connections", "_state")


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_every_name_follows_prometheus_conventions() -> None:
    for metric in m.CATALOGUE:
        for family in metric.describe():
            exposed = family.name + ("_total" if family.type == "counter" else "")
            assert NAME_RE.match(exposed), exposed
            assert exposed.endswith(UNITS), f"{exposed} lacks a unit or _total suffix"
            if family.type == "counter":
                assert exposed.endswith("_total")
            else:
                assert not exposed.endswith("_total")
            assert family.documentation


def test_catalogue_is_registered_in_default_registry() -> None:
    families = {n.removesuffix("_total") for n in m.family_names()}
    assert families <= m.registered_in()


def test_required_metrics_present_with_labels() -> None:
    expected = {
        "clinstream_stage_records_in_total": ("stage", "source"),
        "clinstream_stage_records_out_total": ("stage", "destination"),
        "clinstream_stage_records_dropped_total": ("stage", "reason"),
        "clinstream_stage_records_dlq_total": ("stage", "reason"),
        "clinstream_stage_processing_seconds": ("stage",),
        "clinstream_end_to_end_latency_seconds": ("destination",),
        "clinstream_consumer_lag_records": ("group", "topic", "partition"),
        "clinstream_mllp_connections": ("source",),
        "clinstream_mllp_acks_total": ("source", "code"),
        "clinstream_mpi_decisions_total": ("band",),
        "clinstream_consent_denials_total": ("destination", "reason"),
        "clinstream_sink_retries_total": ("destination",),
        "clinstream_sink_circuit_state": ("destination",),
        "clinstream_sink_records_total": ("destination", "outcome"),
        "clinstream_disclosures_total": ("destination", "purpose"),
        "clinstream_source_records_total": ("source", "outcome"),
        "clinstream_ingest_bytes_total": ("source",),
        "clinstream_replica_records_applied_total": ("topic",),
        "clinstream_replica_unechoed_records": ("topic",),
    }
    by_name = {}
    for metric in m.CATALOGUE:
        family = metric.describe()[0]
        by_name[family.name + ("_total" if family.type == "counter" else "")] = metric
    assert set(expected) == set(by_name)
    for name, labels in expected.items():
        assert tuple(by_name[name]._labelnames) == labels, name


def test_sample_names_cover_histogram_and_counter_series() -> None:
    names = m.sample_names()
    assert "clinstream_stage_processing_seconds_bucket" in names
    assert "clinstream_end_to_end_latency_seconds_count" in names
    assert "clinstream_sink_retries_created" in names
    assert "clinstream_consumer_lag_records" in names


def test_stage_helper_counts_and_times() -> None:
    st = m.stage("normalize-test")
    assert m.stage("normalize-test") is st
    before = sample("clinstream_stage_records_in_total", stage="normalize-test", source="adt")
    st.records_in("adt")
    st.records_in("adt", 4)
    st.records_out("billing")
    st.dropped("duplicate")
    st.dlq("parse-error")
    with st.timer():
        pass
    st.observe_seconds(0.002)
    assert sample("clinstream_stage_records_in_total", stage="normalize-test", source="adt") == before + 5
    assert sample("clinstream_stage_records_out_total", stage="normalize-test", destination="billing") == 1
    assert sample("clinstream_stage_records_dropped_total", stage="normalize-test", reason="duplicate") == 1
    assert sample("clinstream_stage_records_dlq_total", stage="normalize-test", reason="parse-error") == 1
    assert sample("clinstream_stage_processing_seconds_count", stage="normalize-test") == 2
    assert sample("clinstream_stage_processing_seconds_bucket", stage="normalize-test", le="0.0025") == 2


def test_timer_observes_even_when_the_body_raises() -> None:
    st = m.stage("timer-raise")
    with pytest.raises(RuntimeError), st.timer():
        raise RuntimeError("boom")
    assert sample("clinstream_stage_processing_seconds_count", stage="timer-raise") == 1


def test_source_helper() -> None:
    src = m.source("mllp-test")
    src.connection_opened()
    src.connection_opened()
    src.connection_closed()
    src.accepted(120)
    src.accepted(80)
    src.rejected()
    src.ack("AA")
    src.ack("AR")
    assert sample("clinstream_mllp_connections", source="mllp-test") == 1
    assert sample("clinstream_ingest_bytes_total", source="mllp-test") == 200
    assert sample("clinstream_source_records_total", source="mllp-test", outcome="accepted") == 2
    assert sample("clinstream_source_records_total", source="mllp-test", outcome="rejected") == 1
    assert sample("clinstream_mllp_acks_total", source="mllp-test", code="AR") == 1


def test_sink_helper_latency_retries_circuit() -> None:
    sk = m.sink("dest-test")
    assert sample("clinstream_sink_circuit_state", destination="dest-test") == 0
    received = datetime(2024, 1, 1, tzinfo=UTC)
    sk.delivered(received, delivered_at=(received + timedelta(seconds=0.3)).timestamp())
    sk.delivered(received.timestamp(), delivered_at=received.timestamp() + 20)
    sk.delivered()
    sk.record("dlq")
    sk.retry()
    sk.circuit(m.CircuitState.OPEN)
    assert sample("clinstream_sink_records_total", destination="dest-test", outcome="delivered") == 3
    assert sample("clinstream_sink_records_total", destination="dest-test", outcome="dlq") == 1
    assert sample("clinstream_end_to_end_latency_seconds_count", destination="dest-test") == 2
    assert sample("clinstream_end_to_end_latency_seconds_bucket", destination="dest-test", le="0.5") == 1
    assert sample("clinstream_end_to_end_latency_seconds_sum", destination="dest-test") == pytest.approx(20.3)
    assert sample("clinstream_sink_retries_total", destination="dest-test") == 1
    assert sample("clinstream_sink_circuit_state", destination="dest-test") == 2


def test_clock_skew_never_observes_negative_latency() -> None:
    sk = m.sink("skew-test")
    sk.delivered(1000.0, delivered_at=999.0)
    assert sample("clinstream_end_to_end_latency_seconds_sum", destination="skew-test") == 0


def test_module_level_counters() -> None:
    m.mpi_decision("review")
    m.consent_denied("research", "opt-out")
    m.disclosure("research", "HRESCH")
    assert sample("clinstream_mpi_decisions_total", band="review") >= 1
    assert sample("clinstream_consent_denials_total", destination="research", reason="opt-out") >= 1
    assert sample("clinstream_disclosures_total", destination="research", purpose="HRESCH") >= 1


def test_exposition_contains_help_and_types() -> None:
    text = generate_latest(REGISTRY).decode()
    assert "# TYPE clinstream_stage_records_in_total counter" in text
    assert "# TYPE clinstream_stage_processing_seconds histogram" in text
    assert "# TYPE clinstream_consumer_lag_records gauge" in text


class TestLagFromWatermarks:
    def test_committed_offset_is_next_to_read(self) -> None:
        assert m.lag_from_watermarks({("t", 0): 10}, {("t", 0): 10}) == {("t", 0): 0}
        assert m.lag_from_watermarks({("t", 0): 7}, {("t", 0): 10}) == {("t", 0): 3}

    def test_no_commit_counts_from_low_watermark(self) -> None:
        lags = m.lag_from_watermarks(
            {("t", 1): None, ("t", 2): -1001},
            {("t", 0): 5, ("t", 1): 9, ("t", 2): 4},
            {("t", 1): 4, ("t", 2): 1},
        )
        assert lags == {("t", 0): 5, ("t", 1): 5, ("t", 2): 3}

    def test_commit_deleted_by_retention_is_capped(self) -> None:
        assert m.lag_from_watermarks({("t", 0): 3}, {("t", 0): 100}, {("t", 0): 90}) == {("t", 0): 10}

    def test_never_negative(self) -> None:
        assert m.lag_from_watermarks({("t", 0): 12}, {("t", 0): 10}) == {("t", 0): 0}

    def test_only_partitions_with_watermarks_are_reported(self) -> None:
        assert m.lag_from_watermarks({("gone", 0): 3}, {}) == {}

    def test_set_consumer_lag_updates_gauge(self) -> None:
        m.set_consumer_lag("grp-test", m.lag_from_watermarks({("dest.x", 0): 2}, {("dest.x", 0): 9}))
        assert sample("clinstream_consumer_lag_records", group="grp-test", topic="dest.x", partition="0") == 7


def test_sink_batch_delivery() -> None:
    sk = m.sink("batch-test")
    sk.delivered_batch([100.0, None, datetime.fromtimestamp(99.0, UTC)], delivered_at=101.0)
    sk.delivered_batch([])
    sk.dlq(2)
    assert sample("clinstream_sink_records_total", destination="batch-test", outcome="delivered") == 3
    assert sample("clinstream_sink_records_total", destination="batch-test", outcome="dlq") == 2
    assert sample("clinstream_end_to_end_latency_seconds_count", destination="batch-test") == 2
    assert sample("clinstream_end_to_end_latency_seconds_sum", destination="batch-test") == pytest.approx(3.0)
