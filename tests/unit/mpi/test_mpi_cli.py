from __future__ import annotations

import argparse
import json
from pathlib import Path

import orjson
import pytest

from streams.identity.cli import add_mpi_parsers, load_records
from streams.identity.model import load_model
from streams.identity.record import PatientRecord, to_fhir_patient


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="clinstream")
    add_mpi_parsers(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def _records(n: int) -> list[PatientRecord]:
    given = ["ann", "ben", "cara", "dev", "eli", "fay", "gus", "hal"]
    family = ["ames", "bell", "cole", "dunn", "east", "ford", "gray", "hart", "ives", "judd"]
    out = []
    for i in range(n):
        out.append(
            PatientRecord(
                str(i),
                "t",
                given=given[i % 8],
                family=family[(i // 8) % 10],
                birth_date=f"19{50 + i % 40}-0{1 + i % 9}-1{i % 10}",
                postal_code=f"9{i % 7}000",
            )
        )
    return out


def test_train_from_ndjson(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "patients.ndjson"
    recs = _records(120)
    src.write_bytes(b"\n".join(orjson.dumps(to_fhir_patient(r)) for r in [*recs, *recs[:30]]))
    out = tmp_path / "model.json"
    args = parse(["mpi", "train", "--input", str(src), "--out", str(out), "--version", "t1"])
    assert args.func(args) == 0
    model = load_model(out)
    assert model.version == "t1" and model.metadata["records"] == 150
    assert "t1" in capsys.readouterr().out


def test_train_from_csv(tmp_path: Path) -> None:
    src = tmp_path / "p.csv"
    rows = ["rec_id,given_name,surname,date_of_birth,street_number,address_1,postcode,soc_sec_id,mrn"]
    rows += [
        f"r{r.record_id},{r.given},{r.family},{r.birth_date},{i},main st,{r.postal_code},{1000000 + i},M{i}"
        for i, r in enumerate(_records(60))
    ]
    src.write_text("\n".join(rows) + "\n")
    recs = load_records(src, "csvsrc")
    assert recs[1].address_line == "1 main st" and recs[1].ssn == "1000001"
    assert recs[1].identifiers[0].value == "M1" and recs[1].record_id == "r1"
    out = tmp_path / "m.json"
    args = parse(["mpi", "train", "--input", str(src), "--out", str(out)])
    assert args.func(args) == 0 and out.exists()


def test_train_missing_input(tmp_path: Path) -> None:
    args = parse(["mpi", "train", "--input", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "m.json")])
    assert args.func(args) == 2


def test_evaluate_json(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(["mpi", "evaluate", "--febrl", "1", "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"precision", "recall", "f1", "candidate_pairs", "seconds"} <= set(out)
    assert out["dataset"] == "febrl1" and out["f1"] >= 0.99


def test_evaluate_text(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import streams.identity.febrl as febrl

    seen = {}

    def fake(n: int, thresholds: object) -> dict[str, object]:
        seen["args"] = (n, thresholds)
        return {
            "dataset": f"febrl{n}",
            "precision": 0.995,
            "recall": 0.9,
            "f1": 0.945,
            "candidate_pairs": 10,
            "seconds": 0.5,
            "true_links": 3,
            "predicted_links": 2,
            "review_links": 1,
        }

    monkeypatch.setattr(febrl, "evaluate_febrl", fake)
    args = parse(["mpi", "evaluate", "--febrl", "3", "--auto-link", "0.999", "--review", "0.3"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "candidate pairs" in text and "0.9450" in text and "febrl3" in text
    assert seen["args"][0] == 3 and seen["args"][1].auto_link == 0.999  # type: ignore[attr-defined]


def test_evaluate_rejects_unknown_dataset() -> None:
    with pytest.raises(SystemExit):
        parse(["mpi", "evaluate", "--febrl", "5"])
