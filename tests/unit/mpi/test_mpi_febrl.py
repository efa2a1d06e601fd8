"""FEBRL 1 through the production engine, unsupervised (EM on the data itself)."""

from __future__ import annotations

from streams.identity.febrl import evaluate_febrl, true_links
from streams.identity.record import PatientRecord

# Achieved 1.000 / 1.000 / 1.000 at auto-link 0.99; floors sit just under that.
F1_FLOOR = 0.99
PRECISION_FLOOR = 0.99


def test_febrl1_quality_floor() -> None:
    result = evaluate_febrl(1)
    assert result["dataset"] == "febrl1"
    assert result["true_links"] == 500
    assert result["precision"] >= PRECISION_FLOOR
    assert result["f1"] >= F1_FLOOR
    # Blocking must stay far from all-pairs (1000 records → 499,500 pairs).
    assert result["candidate_pairs"] < 5_000
    assert set(result) >= {
        "precision",
        "recall",
        "f1",
        "candidate_pairs",
        "seconds",
        "true_links",
        "predicted_links",
    }


def test_true_links_follow_the_rec_id_convention() -> None:
    recs = [PatientRecord(i, "f") for i in ("rec-1-org", "rec-1-dup-0", "rec-1-dup-1", "rec-2-org")]
    assert true_links(recs, None) == {
        ("rec-1-dup-0", "rec-1-org"),
        ("rec-1-dup-1", "rec-1-org"),
        ("rec-1-dup-0", "rec-1-dup-1"),
    }
    a = [PatientRecord("rec-5-org", "a"), PatientRecord("rec-6-org", "a")]
    b = [PatientRecord("rec-5-dup-0", "b")]
    assert true_links(a, b) == {("rec-5-org", "rec-5-dup-0")}
