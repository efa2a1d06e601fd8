"""``clinstream mpi ...`` subcommands: thin shells over functions tests can call.

``add_mpi_parsers(subparsers)`` registers::

    mpi evaluate --febrl {1,2,3,4} [--json] [--auto-link P] [--review P]
    mpi train --input FILE (.ndjson of FHIR Patients | .csv) --out model.json [--source NAME]

Each parser sets ``func`` to a callable taking the ``argparse.Namespace`` and returning an
exit code, so ``clinstream/cli.py`` only needs ``return args.func(args)``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from streams.identity.engine import Thresholds
from streams.identity.record import Identifier, PatientRecord, from_fhir_patient

# CSV header aliases → PatientRecord field (FEBRL, Splink demos and plain exports).
_CSV_ALIASES: dict[str, tuple[str, ...]] = {
    "record_id": ("record_id", "rec_id", "id", "unique_id", "patient_id"),
    "given": ("given", "given_name", "first_name", "firstname"),
    "family": ("family", "surname", "last_name", "lastname", "family_name"),
    "birth_date": ("birth_date", "birthdate", "dob", "date_of_birth"),
    "sex": ("sex", "gender"),
    "address_line": ("address_line", "address", "address_1", "street"),
    "address_line2": ("address_line2", "address_2"),
    "city": ("city", "suburb", "town"),
    "state": ("state",),
    "postal_code": ("postal_code", "postcode", "zip", "zipcode"),
    "phone": ("phone", "telephone", "phone_number"),
    "ssn": ("ssn", "soc_sec_id", "social_security_number"),
    "ssn_last4": ("ssn_last4",),
}


def _pick(row: dict[str, str], names: tuple[str, ...]) -> str:
    for name in names:
        value = row.get(name)
        if value:
            return value.strip()
    return ""


def records_from_csv(path: Path, source: str) -> Iterator[PatientRecord]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        for n, raw in enumerate(reader):
            row = {(k or "").strip().lower(): (v or "") for k, v in raw.items()}
            values = {field: _pick(row, names) for field, names in _CSV_ALIASES.items()}
            number = _pick(row, ("street_number", "house_number"))
            if number:
                values["address_line"] = f"{number} {values['address_line']}".strip()
            idents: tuple[Identifier, ...] = ()
            if row.get("mrn"):
                system = row.get("mrn_system") or f"urn:clinstream:source:{row.get('source') or source}"
                idents = (Identifier(system, row["mrn"].strip(), "MR"),)
            values["record_id"] = values["record_id"] or str(n)
            yield PatientRecord(source=row.get("source") or source, identifiers=idents, **values)


def records_from_ndjson(path: Path, source: str) -> Iterator[PatientRecord]:
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                yield from_fhir_patient(orjson.loads(line), source)


def load_records(path: Path, source: str) -> list[PatientRecord]:
    if path.suffix.lower() == ".csv":
        return list(records_from_csv(path, source))
    return list(records_from_ndjson(path, source))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from streams.identity.febrl import evaluate_febrl

    result = evaluate_febrl(args.febrl, Thresholds(auto_link=args.auto_link, review=args.review))
    if args.json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
        return 0
    rows: list[tuple[str, Any]] = [
        ("dataset", result["dataset"]),
        ("precision", f"{result['precision']:.4f}"),
        ("recall", f"{result['recall']:.4f}"),
        ("F1", f"{result['f1']:.4f}"),
        ("candidate pairs", result["candidate_pairs"]),
        ("seconds", f"{result['seconds']:.2f}"),
        ("true links", result["true_links"]),
        ("predicted links (auto-link)", result["predicted_links"]),
        ("review-band pairs", result["review_links"]),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        sys.stdout.write(f"{key:<{width}}  {value}\n")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from streams.identity.em import train

    path = Path(args.input)
    if not path.exists():
        sys.stderr.write(f"input not found: {path}\n")
        return 2
    records = load_records(path, args.source)
    if len(records) < 2:
        sys.stderr.write("need at least two records to train\n")
        return 2
    model = train(records, version=args.version)
    model.metadata["input"] = path.name  # the file name only: paths can carry PHI context
    model.save(args.out)
    sys.stdout.write(
        f"trained {model.version} on {len(records)} records "
        f"({model.metadata['candidate_pairs']} candidate pairs, prior {model.prior:.3g}) -> {args.out}\n"
    )
    return 0


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be a probability between 0 and 1")
    return value


def add_mpi_parsers(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mpi evaluate`` and ``mpi train`` on an argparse subparsers object."""
    mpi = subparsers.add_parser("mpi", help="master patient index: evaluate and train the matcher")
    sub = mpi.add_subparsers(dest="mpi_command", required=True)

    ev = sub.add_parser("evaluate", help="precision/recall/F1 on a FEBRL benchmark")
    ev.add_argument("--febrl", type=int, choices=(1, 2, 3, 4), required=True)
    ev.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ev.add_argument("--auto-link", type=_probability, default=0.99, help="auto-link match probability")
    ev.add_argument("--review", type=_probability, default=0.5, help="review-band match probability")
    ev.set_defaults(func=cmd_evaluate)

    tr = sub.add_parser("train", help="estimate m/u parameters by EM from unlabelled records")
    tr.add_argument("--input", required=True, help="NDJSON of FHIR Patient resources, or CSV")
    tr.add_argument("--out", required=True, help="model JSON to write")
    tr.add_argument("--source", default="train", help="source name for records without one")
    tr.add_argument("--version", default=None, help="model version string (default em-<timestamp>)")
    tr.set_defaults(func=cmd_train)
    return mpi
