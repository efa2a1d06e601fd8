"""Golden output: conversion results must stay byte-identical (performance work must not change them).

``golden_digests.json`` holds the SHA-256 of ``orjson.dumps(bundle, option=OPT_SORT_KEYS)`` for every
corpus message (and a small ADT^A01) converted with ``source="golden"``.  After an intentional mapping
change, regenerate with ``CLINSTREAM_UPDATE_GOLDEN=1 pytest tests/unit/hl7v2/test_golden_output.py``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import orjson
import pytest

from streams.normalize.hl7v2 import convert_message

DIGESTS = Path(__file__).with_name("golden_digests.json")

SMALL_ADT_A01 = (
    b"MSH|^~\\&|ADT1|GOOD HEALTH HOSPITAL|GHH LAB, INC.|GOOD HEALTH HOSPITAL|20240115083000+0100||ADT^A01^ADT_A01"
    b"|MSG00001|P|2.5.1\r"
    b"EVN|A01|20240115083000+0100|||JSMITH^SMITH^JOHN^^^DR|20240115082500+0100\r"
    b"PID|1||PATID1234^^^GHH&2.16.840.1.113883.19.5&ISO^MR~123456789^^^USSSA^SS||EVERYMAN^ADAM^A^III^^^L||19610615"
    b"|M||2106-3^White^HL70005|2222 HOME STREET^^GREENSBORO^NC^27401-1020^USA^H||(555)555-2004^PRN^PH"
    b"|(555)555-2005^WPN^PH||S||PATID12345001^2^M10^GHH^AN|444333333|||N^Not Hispanic^HL70189\r"
    b"PV1|1|I|2000^2012^01^GHH||||004777^ATTEND^AARON^A^^^DR|||SUR||||ADM|A0|||||V1001^^^GHH&2.16.840.1.113883.19.5"
    b"&ISO^VN|||||||||||||||||||||||||20240115080000+0100\r"
)


def _digest(data: bytes) -> str:
    bundle = convert_message(data, source="golden")
    return hashlib.sha256(orjson.dumps(bundle, option=orjson.OPT_SORT_KEYS)).hexdigest()


def test_outputs_match_golden(corpus: dict[str, bytes]) -> None:
    current = {stem: _digest(raw) for stem, raw in corpus.items()}
    current["SMALL-ADT-A01"] = _digest(SMALL_ADT_A01)
    if os.environ.get("CLINSTREAM_UPDATE_GOLDEN"):
        DIGESTS.write_bytes(orjson.dumps(current, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n")
        pytest.skip("golden digests rewritten")
    golden: dict[str, str] = orjson.loads(DIGESTS.read_bytes())
    compared = [stem for stem in current if stem in golden]
    assert len(compared) >= len(golden) * 0.9, "most golden messages are missing from the corpus"
    changed = sorted(stem for stem in compared if current[stem] != golden[stem])
    assert not changed, f"conversion output changed for {changed}"
