"""Segment/message mapping, determinism, event_summary, fhir.resources validation, CLI."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import pytest

from schemas.hl7v2 import Hl7ParseError
from schemas.hl7v2.parser import parse_message
from streams.normalize.hl7v2 import UnsupportedMessageError, convert_message, event_summary
from streams.normalize.hl7v2.bench import add_bench_convert_parser, run_convert_bench
from streams.normalize.hl7v2.cli import add_convert_parser, convert_command
from streams.normalize.hl7v2.samples import message_files
from streams.normalize.hl7v2.validate import validate_bundle

ADT_A01 = (
    "MSH|^~\\&|ADT|HOSP^1.2.3^ISO|EHR|CLINIC|20240102030405+0100||ADT^A01^ADT_A01|C1|P|2.5.1\r"
    "EVN|A01|20240102030405+0100||||20240102020000+0100\r"
    "PID|1||MRN1^^^HOSP&1.2.3.4&ISO^MR||DOE^JANE^Q||19800215|F|||1 MAIN ST^^TOWN^ST^12345^USA^H"
    "||555-1234^PRN^PH|||M\r"
    + "|".join(["PV1", "1", "I", "W1^101^A^HOSP", "", "", "", "123^House^Greg", "", "", "MED"] + [""] * 8
               + ["V100^^^HOSP&1.2.3.4&ISO^VN"] + [""] * 24 + ["20240102020000+0100"]) + "\r"
    + "OBX|1|NM|8867-4^Heart rate^LN||72|/min^per minute^UCUM|60-100|N|||F|||20240102021500+0100\r"
    + "AL1|1|DA|70618^Penicillin^RXNORM|SV|hives\r"
    + "DG1|1||I10^Hypertension^I10|||A\r"
)


def _types(bundle: dict) -> list[str]:
    return [e["resource"]["resourceType"] for e in bundle["entry"]]


def _one(bundle: dict, rtype: str) -> dict:
    found = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]
    assert len(found) == 1, (rtype, found)
    return found[0]


def test_adt_a01_maps_patient_encounter_and_clinical_segments() -> None:
    bundle = convert_message(ADT_A01, source="hosp")
    assert bundle["type"] == "message" and _types(bundle)[0] == "MessageHeader"
    assert bundle["timestamp"] == "2024-01-02T03:04:05+01:00"
    patient = _one(bundle, "Patient")
    assert patient["identifier"][0]["system"] == "urn:oid:1.2.3.4"
    assert patient["name"] == [{"family": "DOE", "given": ["JANE", "Q"]}]
    assert (patient["birthDate"], patient["gender"]) == ("1980-02-15", "female")
    assert patient["maritalStatus"]["coding"][0]["code"] == "M"
    enc = _one(bundle, "Encounter")
    assert enc["class"]["code"] == "IMP" and enc["status"] == "in-progress"
    assert enc["period"] == {"start": "2024-01-02T02:00:00+01:00"}
    assert enc["subject"]["reference"] == next(e["fullUrl"] for e in bundle["entry"]
                                               if e["resource"]["resourceType"] == "Patient")
    obs = _one(bundle, "Observation")
    assert obs["valueQuantity"] == {"value": 72, "unit": "per minute", "system": "http://unitsofmeasure.org",
                                    "code": "/min"}
    assert obs["status"] == "final" and obs["referenceRange"] == [{"text": "60-100"}]
    assert _one(bundle, "AllergyIntolerance")["criticality"] == "high"
    assert _one(bundle, "Condition")["code"]["coding"][0]["system"] == "http://hl7.org/fhir/sid/icd-10"
    header = _one(bundle, "MessageHeader")
    assert header["eventCoding"]["code"] == "A01"
    assert header["source"]["endpoint"] == "urn:clinstream:v2:app:ADT"
    assert validate_bundle(bundle) == []


def test_event_summary() -> None:
    summary = event_summary(convert_message(ADT_A01, source="hosp"))
    assert summary["event_type"] == "ADT^A01"
    assert summary["control_id"] == "C1"
    assert summary["patient_identifiers"] == [{"system": "urn:oid:1.2.3.4", "value": "MRN1", "type": "MR"}]
    assert summary["occurred_at"] == "2024-01-02T02:00:00+01:00"


def test_ids_are_deterministic_and_scoped_by_source() -> None:
    a, b = convert_message(ADT_A01, source="s1"), convert_message(ADT_A01.encode(), source="s1")
    assert a == b
    c = convert_message(ADT_A01, source="s2")
    assert {e["fullUrl"] for e in a["entry"]}.isdisjoint({e["fullUrl"] for e in c["entry"]})


def test_shared_resource_ids_are_memoised_as_computed_and_bounded() -> None:
    from streams.normalize.hl7v2 import context

    bundle = convert_message(ADT_A01, source="memo-src")
    for entry in bundle["entry"]:
        res = entry["resource"]
        memo = {k: v for k, v in context._SHARED_IDS.items() if k.startswith(f"memo-src|{res['resourceType']}|")}
        if res["resourceType"] in context._SHARED_TYPES:
            assert res["id"] in memo.values()
            key = next(k for k, v in memo.items() if v == res["id"])
            assert context.uuid5_str(key) == res["id"]  # the memo holds exactly what would be computed
        else:
            assert res["id"] not in memo.values()  # patients, visits, accounts: never kept
    assert convert_message(ADT_A01, source="memo-src") == bundle  # from the memo: the same ids
    ctx = context.Ctx(parse_message(ADT_A01), "memo-bound", "Z")
    for i in range(context._SHARED_IDS_MAX + 10):
        ref = ctx.add({"resourceType": "Device"}, f"dev{i}", scoped=False)
        assert ref == f"urn:uuid:{context.uuid5_str(f'memo-bound|Device|dev{i}')}"
    assert len(context._SHARED_IDS) <= context._SHARED_IDS_MAX


def test_patient_id_is_stable_across_messages_of_a_source() -> None:
    a08 = ADT_A01.replace("ADT^A01^ADT_A01|C1", "ADT^A08^ADT_A01|C2")
    pat1 = _one(convert_message(ADT_A01, source="s"), "Patient")["id"]
    pat2 = _one(convert_message(a08, source="s"), "Patient")["id"]
    assert pat1 == pat2


def test_a03_discharge_finishes_the_encounter() -> None:
    a03 = ADT_A01.replace("ADT^A01^ADT_A01", "ADT^A03^ADT_A03").replace(
        "20240102020000+0100\rOBX", "20240102020000+0100|20240105120000+0100\rOBX")
    enc = _one(convert_message(a03), "Encounter")
    assert enc["status"] == "finished" and enc["period"]["end"] == "2024-01-05T12:00:00+01:00"


def test_merge_links_patients() -> None:
    a40 = ("MSH|^~\\&|A|B|C|D|20240101||ADT^A40^ADT_A39|M1|P|2.5\rEVN|A40|20240101\r"
           "PID|1||NEW1^^^H^MR||DOE^J\rMRG|OLD9^^^H^MR\r")
    bundle = convert_message(a40)
    patients = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    survivor = next(p for p in patients if p["resource"].get("active") is not False)
    merged = next(p for p in patients if p["resource"].get("active") is False)
    assert survivor["resource"]["link"] == [{"other": {"reference": merged["fullUrl"]}, "type": "replaces"}]
    assert merged["resource"]["link"][0]["type"] == "replaced-by"
    assert event_summary(bundle)["patient_identifiers"][-1]["value"] == "OLD9"


def test_unsupported_message_type() -> None:
    with pytest.raises(UnsupportedMessageError) as info:
        convert_message("MSH|^~\\&|A|B|C|D|20240101||QBP^Q11|1|P|2.5\r")
    assert isinstance(info.value, Hl7ParseError) and info.value.hl7_error_code == 200


def test_every_corpus_bundle_validates_with_fhir_resources(corpus: dict[str, bytes]) -> None:
    problems = {}
    for stem, raw in corpus.items():
        found = validate_bundle(convert_message(raw, source="validation"))
        if found:
            problems[stem] = found[:3]
    assert problems == {}


def test_every_corpus_trigger_is_supported(corpus: dict[str, bytes]) -> None:
    events = {event_summary(convert_message(raw))["event_type"] for raw in corpus.values()}
    assert len(events) >= 57


def _parse_cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="clinstream")
    sub = parser.add_subparsers(dest="command", required=True)
    add_convert_parser(sub)
    bench = sub.add_parser("bench").add_subparsers(dest="bench_target", required=True)
    add_bench_convert_parser(bench)
    return parser.parse_args(argv)


def test_cli_file_to_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a01.hl7"
    path.write_text(ADT_A01)
    args = _parse_cli(["convert", "hl7v2", str(path), "--pretty"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["resourceType"] == "Bundle"


def test_cli_stdin_failure_names_segment_and_field(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    bad = ADT_A01.replace("19800215", "1980021x").encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(bad)))
    assert convert_command(_parse_cli(["convert", "hl7v2", "-"])) == 1
    assert "PID-7 (segment 3): invalid timestamp '1980021x'" in capsys.readouterr().err


def test_cli_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for path in message_files()[:3]:
        (src / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "out"
    assert convert_command(_parse_cli(["convert", "hl7v2", str(src), "--out", str(out)])) == 0
    assert len(list(out.glob("*.json"))) == 3
    (src / "broken.hl7").write_bytes(b"PID|1")
    assert convert_command(_parse_cli(["convert", "hl7v2", str(src), "--out", str(out)])) == 1
    assert "broken.hl7" in capsys.readouterr().out


def test_bench_reports_all_keys() -> None:
    files = message_files()[:5]
    result = run_convert_bench(0.05, files=files, baseline_seconds=0.05)
    for key in ("parse_msgs_per_s", "convert_msgs_per_s", "convert_default_gc_msgs_per_s", "hl7apy_msgs_per_s",
                "python_hl7_msgs_per_s"):
        assert result[key] > 0
