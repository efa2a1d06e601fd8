"""Stages chained in one agent: same outputs as one agent per stage, dead letters carry the consumed record."""

from __future__ import annotations

import orjson

from schemas import headers as H
from schemas.envelope import decode_event
from streams.chain import StageChain
from streams.dedupe.stage import DedupeStage
from streams.identity.stage import IdentityStage
from streams.normalize.stage import NormalizeStage
from streams.stage import InRecord, Outcome, Output
from tests.unit.identity.test_identity_stage import adt
from topology.model import CANONICAL, DEDUPED, IDENTIFIED, MPI_LINKS, MPI_PATIENTS, MPI_REVIEW

RAW = "raw.hl7v2.feed"


def raw_record(value: bytes, offset: int, **headers: str) -> InRecord:
    return InRecord(RAW, 2, offset, b"MRN1", value, {H.SOURCE: "feed", **headers})


def chain() -> StageChain:
    return StageChain([NormalizeStage(input_topics=[RAW]), DedupeStage(seen={}), IdentityStage.with_store()])


def test_inputs_are_the_topics_no_earlier_stage_writes() -> None:
    assert chain().input_topics == (RAW, MPI_REVIEW)


def test_one_record_goes_through_every_stage_and_every_topic_is_still_written() -> None:
    pending: list = []
    chain().process(raw_record(adt("A01", "MRN1", "DOE", "JANE", "19800101", "C1"), 5), pending)
    topics = [p[0] for p in pending]
    assert topics[:3] == [CANONICAL, DEDUPED, IDENTIFIED]
    assert MPI_LINKS in topics and MPI_PATIENTS in topics
    identified = decode_event(next(p[2] for p in pending if p[0] == IDENTIFIED))
    assert identified["patient"]["euid"]
    assert identified["lineage"] == {"topic": RAW, "partition": 2, "offset": 5,
                                     "stages": ["normalize", "dedupe", "identity"]}
    # the same bytes as one agent per stage would write: the canonical record decodes to the dedupe input
    canonical = decode_event(next(p[2] for p in pending if p[0] == CANONICAL))
    assert canonical["event_id"] == identified["event_id"] and canonical["lineage"]["stages"] == ["normalize"]


def test_the_resources_json_handed_along_is_what_one_agent_per_stage_would_write() -> None:
    """Normalize hands its resources' JSON along with the event; dedupe and identity leave the resources
    alone, so writing that JSON is writing their resources: each topic gets the resources a stage that
    decoded its input from the topic would write, and the handed-over JSON is always ``resources``."""
    raw = raw_record(adt("A08", "MRN7", "ROE", "RICHARD", "19700203", "C7"), 9)
    pending: list = []
    chained = chain()
    chained.process(raw, pending)
    by_topic = {p[0]: decode_event(p[2]) for p in pending if p[0] in (CANONICAL, DEDUPED, IDENTIFIED)}

    alone = StageChain([NormalizeStage(input_topics=[RAW]), DedupeStage(seen={}), IdentityStage.with_store()])
    records = [raw]
    for runner in alone.runners:  # one agent per stage: each decodes what the previous one wrote
        out = runner.stage.process(records[-1]).outputs[0]
        assert out.event is not None
        assert out.event.get("resources_json", orjson.dumps(out.event["resources"]).decode()) == \
            orjson.dumps(out.event["resources"]).decode()
        records.append(InRecord(out.topic, 2, 9, out.key, out.value, H.as_dict(out.headers)))
        assert decode_event(out.value)["resources"] == by_topic[out.topic]["resources"], out.topic
    assert by_topic[CANONICAL]["resources"] == by_topic[IDENTIFIED]["resources"]


def test_a_duplicate_stops_at_dedupe_and_a_redrive_goes_through() -> None:
    c = chain()
    msg = adt("A01", "MRN1", "DOE", "JANE", "19800101", "C1")
    c.process(raw_record(msg, 1), [])
    again: list = []
    c.process(raw_record(msg, 2), again)
    assert [p[0] for p in again] == [CANONICAL]  # normalized, then dropped as a duplicate
    redriven: list = []
    c.process(raw_record(msg, 3, **{H.REDRIVE_COUNT: "1"}), redriven)
    assert IDENTIFIED in [p[0] for p in redriven]
    flag = dict(next(p[3] for p in redriven if p[0] == DEDUPED))["clinstream-dedupe-flag"]
    assert flag == b"redriven"


class Failing:
    name = "identity"
    input_topics = (DEDUPED,)
    output_topic = IDENTIFIED

    def process(self, record: InRecord) -> Outcome:
        raise RuntimeError("index unavailable")


def test_an_inner_stage_failure_dead_letters_the_consumed_record() -> None:
    c = StageChain([NormalizeStage(input_topics=[RAW]), DedupeStage(seen={}), Failing()])
    value = adt("A01", "MRN1", "DOE", "JANE", "19800101", "C1")
    pending: list = []
    c.process(raw_record(value, 9), pending)
    topic, key, dlq_value, headers = pending[-1]
    h = H.as_dict(headers)
    assert topic == "dlq.identity" and dlq_value == value and key == b"MRN1"
    assert (h[H.ERROR_STAGE], h[H.ORIGIN_TOPIC], h[H.ORIGIN_PARTITION], h[H.ORIGIN_OFFSET]) == \
        ("identity", RAW, "2", "9")
    assert "index unavailable" in h[H.ERROR_MESSAGE]


class Buffered:
    """A stage with write-behind state: what ``flush`` returns goes out with the batch."""

    name = "buffered"
    input_topics = ("in",)

    def process(self, record: InRecord) -> Outcome:
        return Outcome.drop("kept")

    def flush(self) -> list[Output]:
        return [Output("state-changelog", None, b"k")]  # a tombstone


def test_flush_outputs_join_the_batch() -> None:
    pending: list = []
    StageChain([Buffered()]).flush(pending)
    assert pending == [("state-changelog", b"k", None, ())]


def test_record_counts_reach_the_stage_metrics_at_the_end_of_the_batch() -> None:
    from prometheus_client import REGISTRY

    def count(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    source = "feed-counts"
    c = chain()
    before_in = count("clinstream_stage_records_in_total", stage="dedupe", source=source)
    before_out = count("clinstream_stage_records_out_total", stage="dedupe", destination=DEDUPED)
    pending: list = []
    for i in range(3):
        value = adt("A01", f"MRNC{i}", "DOE", "JANE", "19800101", f"CC{i}")
        c.process(InRecord(RAW, 2, i, f"MRNC{i}".encode(), value, {H.SOURCE: source}), pending)
    assert count("clinstream_stage_records_in_total", stage="dedupe", source=source) == before_in
    c.flush(pending)
    assert count("clinstream_stage_records_in_total", stage="dedupe", source=source) == before_in + 3
    assert count("clinstream_stage_records_out_total", stage="dedupe", destination=DEDUPED) == before_out + 3
    c.flush(pending)  # counted once
    assert count("clinstream_stage_records_in_total", stage="dedupe", source=source) == before_in + 3
