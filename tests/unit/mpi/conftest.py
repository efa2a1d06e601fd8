"""Shared fixtures for the MPI engine tests."""

from __future__ import annotations

import pytest

from streams.identity.engine import MatchEngine, Thresholds
from streams.identity.model import default_model
from streams.identity.record import Identifier, PatientRecord


@pytest.fixture
def engine() -> MatchEngine:
    return MatchEngine(default_model(), Thresholds(auto_link=0.99, review=0.5))


@pytest.fixture
def alice() -> PatientRecord:
    return PatientRecord(
        record_id="A1",
        source="ehr",
        identifiers=(Identifier("urn:oid:1.2.3.ehr", "MRN001", "MR"),),
        family="Smith",
        given="Alice",
        birth_date="1980-04-12",
        sex="female",
        address_line="12 High Street",
        city="Springfield",
        state="IL",
        postal_code="62704",
        phone="(217) 555-0134",
        ssn="123-45-6780",
    )
