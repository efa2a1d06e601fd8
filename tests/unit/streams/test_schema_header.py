"""Every Avro record carries the schema it was written with (DESIGN §3), and a reader refuses another one."""

from __future__ import annotations

import json

import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form

from schemas import headers as H
from schemas.envelope import (
    SCHEMA_PATH,
    SchemaMismatchError,
    decode_event,
    parsed_schema,
    restamped_headers,
    schema_fingerprint,
)
from streams.bench import bench_topology
from streams.chain import StageChain, StageRunner
from streams.route.stage import RouteStage
from streams.stage import InRecord
from tests.unit.identity.test_identity_stage import adt
from tests.unit.streams.test_chain import chain, raw_record
from topology.model import AUDIT, CANONICAL, DEDUPED, IDENTIFIED, Topology

AVRO_TOPICS = (CANONICAL, DEDUPED, IDENTIFIED)
OTHER_FINGERPRINT = "0" * 64


def test_the_fingerprint_is_sha256_of_the_parsing_canonical_form_as_fastavro_computes_it() -> None:
    assert schema_fingerprint() == fingerprint(to_parsing_canonical_form(parsed_schema()), "SHA-256")
    assert json.loads(SCHEMA_PATH.read_text())["name"] == "ClinicalEvent"


def _route() -> RouteStage:
    topology = Topology.model_validate(bench_topology("postgresql://bench@127.0.0.1/bench", 1))
    return RouteStage.from_topology(topology, consent={})


def test_every_envelope_record_the_stages_write_carries_the_schema_and_json_records_do_not() -> None:
    pending: list = []
    chain().process(raw_record(adt("A01", "MRN1", "DOE", "JANE", "19800101", "C1"), 5,
                               **{H.SCHEMA_FINGERPRINT: OTHER_FINGERPRINT}), pending)  # a stale copy is replaced
    identified = next(p for p in pending if p[0] == IDENTIFIED)
    routed: list = []
    StageChain([_route()]).process(InRecord(IDENTIFIED, 0, 1, identified[1], identified[2], H.as_dict(identified[3])),
                                   routed)
    dest = [p for p in routed if p[0].startswith("dest.")]
    assert dest, "the bench topology routes an ADT to its destination"
    for topic, _, value, headers in [p for p in pending if p[0] in AVRO_TOPICS] + dest:
        sent = [v for k, v in headers if k == H.SCHEMA_FINGERPRINT]
        assert sent == [schema_fingerprint().encode()], topic
        decode_event(value, sent[0])
    json_records = [p for p in pending + routed if p[0] not in AVRO_TOPICS and not p[0].startswith("dest.")]
    for topic, _, _, headers in json_records:
        assert H.SCHEMA_FINGERPRINT not in dict(headers), f"{topic} is JSON, not the envelope"
    assert AUDIT in {p[0] for p in routed}


def test_restamped_headers_keep_the_consumed_ones_in_order_and_end_with_this_builds_schema() -> None:
    consumed = {H.SOURCE: "lab", H.SCHEMA_FINGERPRINT: OTHER_FINGERPRINT, "clinstream-dedupe-flag": "new",
                H.EVENT_ID: "e1"}
    assert restamped_headers(consumed, drop=("clinstream-dedupe-flag",)) == [
        (H.SOURCE, "lab"), (H.EVENT_ID, "e1"), (H.SCHEMA_FINGERPRINT, schema_fingerprint())]
    assert restamped_headers({}) == [(H.SCHEMA_FINGERPRINT, schema_fingerprint())]


def test_a_reader_refuses_a_record_written_with_another_schema_and_names_both() -> None:
    pending: list = []
    chain().process(raw_record(adt("A01", "MRN1", "DOE", "JANE", "19800101", "C1"), 5), pending)
    value = next(p[2] for p in pending if p[0] == IDENTIFIED)
    assert decode_event(value, schema_fingerprint())["event_id"]
    assert decode_event(value, schema_fingerprint().encode())["event_id"]
    assert decode_event(value)["event_id"]  # no header (a producer of its own): read with this schema
    with pytest.raises(SchemaMismatchError, match=rf"schema {OTHER_FINGERPRINT[:16]}.*{schema_fingerprint()[:16]}"):
        decode_event(value, OTHER_FINGERPRINT)


def test_a_stage_dead_letters_a_record_of_another_schema() -> None:
    pending: list = []
    chain().process(raw_record(adt("A01", "MRN1", "DOE", "JANE", "19800101", "C1"), 5), pending)
    key, value = next((p[1], p[2]) for p in pending if p[0] == IDENTIFIED)
    record = InRecord(IDENTIFIED, 0, 9, key, value, {H.SCHEMA_FINGERPRINT: OTHER_FINGERPRINT})
    routed: list = []
    outcome = StageRunner(_route()).run(record, record, routed)
    assert isinstance(outcome.error, SchemaMismatchError) and not outcome.outputs
    (dlq,) = [p for p in routed if p[0] == "dlq.route"]
    headers = H.as_dict(dlq[3])
    assert headers["error-class"] == "SchemaMismatchError" and OTHER_FINGERPRINT[:16] in headers["error-message"]
    assert dlq[2] == value and headers["origin-offset"] == "9"
