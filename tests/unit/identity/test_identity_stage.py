"""The identity stage on real converted HL7 v2 messages, with an in-memory index."""

from __future__ import annotations

import orjson

from schemas.envelope import decode_event, encode_event
from streams.identity.stage import IdentityStage
from streams.normalize.stage import to_event
from streams.stage import InRecord
from topology.model import IDENTIFIED, MPI_LINKS, MPI_PATIENTS


def adt(trigger: str, mrn: str, family: str, given: str, dob: str, ctrl: str, mrg: str | None = None) -> bytes:
    segs = [
        f"MSH|^~\\&|ADT|HOSP|CLIN|HOSP|20240101120000||ADT^{trigger}^ADT_A01|{ctrl}|P|2.5",
        f"EVN|{trigger}|20240101120000",
        f"PID|1||{mrn}^^^HOSP^MR||{family}^{given}||{dob}|F|||1 MAIN ST^^BOSTON^MA^02115",
    ]
    if mrg:
        segs.append(f"MRG|{mrg}^^^HOSP^MR")
    segs.append("PV1|1|I|W^1^1")
    return "\r".join(segs).encode()


def run(stage: IdentityStage, raw: bytes, offset: int) -> tuple[dict, list]:
    event = to_event(raw, source="feed")
    rec = InRecord("dedup.events", 0, offset, b"k", encode_event(event), {})
    outcome = stage.process(rec)
    assert outcome.error is None and outcome.outputs
    identified = next(o for o in outcome.outputs if o.topic == IDENTIFIED)
    return decode_event(identified.value), list(outcome.outputs)


def test_same_identifier_links_and_keys_by_euid():
    stage = IdentityStage.with_store()
    e1, out1 = run(stage, adt("A01", "111", "DOE", "JANE", "19800101", "c1"), 1)
    e2, _ = run(stage, adt("A08", "111", "DOE", "JANE", "19800101", "c2"), 2)
    assert e1["patient"]["euid"] and e1["patient"]["euid"] == e2["patient"]["euid"]
    identified = next(o for o in out1 if o.topic == IDENTIFIED)
    assert identified.key == e1["patient"]["euid"].encode()
    golden = orjson.loads(next(o for o in out1 if o.topic == MPI_PATIENTS).value)
    assert golden["id"] == e1["patient"]["euid"] and golden["resourceType"] == "Patient"


def test_different_people_get_different_euids():
    stage = IdentityStage.with_store()
    a, _ = run(stage, adt("A01", "111", "DOE", "JANE", "19800101", "c1"), 1)
    b, _ = run(stage, adt("A01", "222", "SMITH", "ROBERT", "19550505", "c2"), 2)
    assert a["patient"]["euid"] != b["patient"]["euid"]


def test_a40_merge_rekeys_later_events_of_the_retired_identifier():
    stage = IdentityStage.with_store()
    prior, _ = run(stage, adt("A01", "AAA", "DOE", "JANE", "19800101", "c1"), 1)
    survivor, _ = run(stage, adt("A01", "BBB", "ROE", "MARY", "19700303", "c2"), 2)
    assert prior["patient"]["euid"] != survivor["patient"]["euid"]
    merged, outputs = run(stage, adt("A40", "BBB", "ROE", "MARY", "19700303", "c3", mrg="AAA"), 3)
    assert merged["patient"]["euid"] == survivor["patient"]["euid"]
    links = [orjson.loads(o.value) for o in outputs if o.topic == MPI_LINKS]
    assert {"type": "merge", "from_euid": prior["patient"]["euid"], "to_euid": survivor["patient"]["euid"]}.items() \
        <= next(link for link in links if link["type"] == "merge").items()
    later, _ = run(stage, adt("A08", "AAA", "DOE", "JANE", "19800101", "c4"), 4)
    assert later["patient"]["euid"] == survivor["patient"]["euid"]


def test_replay_of_the_same_message_is_idempotent():
    stage = IdentityStage.with_store()
    raw = adt("A01", "333", "LEE", "ANN", "19900909", "c9")
    a, _ = run(stage, raw, 1)
    b, _ = run(stage, raw, 1)
    assert a["patient"]["euid"] == b["patient"]["euid"]
