"""Property tests: tokenizer round-trip, and mutated corpus messages fail only with Hl7ParseError, fast."""

from __future__ import annotations

import gc
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.hl7v2 import Hl7ParseError, parse_message, peek_msh
from schemas.hl7v2.parser import Encoding, escape
from streams.normalize.hl7v2 import convert_message
from streams.normalize.hl7v2.samples import message_files

ENC = Encoding("|", "^~\\&")
# Printable text including every delimiter, so escaping is exercised.
TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF, blacklist_categories=("Cs",)),
               max_size=12)
SEG_ID = st.from_regex(r"[A-Z][A-Z0-9]{2}", fullmatch=True).filter(lambda s: s != "MSH")
# field → repetitions → components → subcomponents
FIELD = st.lists(st.lists(st.lists(TEXT, min_size=1, max_size=3), min_size=1, max_size=3), min_size=1, max_size=3)
SEGMENT = st.tuples(SEG_ID, st.lists(FIELD, min_size=1, max_size=6))


def _encode_field(field: list[list[list[str]]]) -> str:
    return "~".join("^".join("&".join(escape(s, ENC) for s in comp) for comp in rep) for rep in field)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(SEGMENT, min_size=1, max_size=5))
def test_generated_messages_round_trip(segments: list[tuple[str, list[list[list[list[str]]]]]]) -> None:
    lines = ["MSH|^~\\&|APP|FAC|||20240101||ADT^A01|1|P|2.5"]
    lines += ["|".join([sid] + [_encode_field(f) for f in fields]) for sid, fields in segments]
    msg = parse_message("\r".join(lines))
    parsed = msg.segments()[1:]
    assert [s.id for s in parsed] == [sid for sid, _ in segments]
    for seg, (_sid, fields) in zip(parsed, segments, strict=True):
        for n, field in enumerate(fields, start=1):
            for r, rep in enumerate(field):
                for c, comp in enumerate(rep, start=1):
                    for s, sub in enumerate(comp, start=1):
                        # a value with only trailing empties is indistinguishable from absent
                        assert seg.get(n, r, c, s) == sub


CORPUS = [p.read_bytes() for p in message_files()]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_corpus_messages_only_raise_hl7_parse_error(data: st.DataObject) -> None:
    raw = bytearray(data.draw(st.sampled_from(CORPUS)))
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "delimiter"]))
        pos = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[pos] = data.draw(st.integers(0, 255))
        elif op == "insert":
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and raw:
            del raw[pos:pos + data.draw(st.integers(1, 16))]
        elif op == "delimiter" and raw:
            raw[pos] = data.draw(st.sampled_from(b"|^~\\&\r\n"))
    # CPU time of this process (other load on the machine does not count), with the cyclic GC
    # paused: a full collection that happens to start in here walks the whole test session's heap
    # (measured 20-40 ms in this module alone, more in the full suite) and says nothing about
    # how the input is handled.  The input cannot make garbage without bound (max_bytes).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.process_time()
        for step in (parse_message, peek_msh, convert_message):
            try:
                step(bytes(raw))
            except Hl7ParseError:
                pass
        elapsed = time.process_time() - start
    finally:
        if was_enabled:
            gc.enable()
    assert elapsed < 0.1
