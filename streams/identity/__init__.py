"""Master patient index (MPI) matching engine: pure logic, no Kafka.

The ``identity`` agent wraps :class:`streams.identity.engine.MatchEngine`; everything here is
plain functions and dataclasses so it can be unit-tested and benchmarked on its own.
"""

from streams.identity.engine import KeyValueStore, MatchEngine, MemoryStore, Resolution, Thresholds
from streams.identity.model import MatchModel, default_model, load_model
from streams.identity.record import Identifier, PatientRecord, from_fhir_patient

__all__ = [
    "Identifier",
    "KeyValueStore",
    "MatchEngine",
    "MatchModel",
    "MemoryStore",
    "PatientRecord",
    "Resolution",
    "Thresholds",
    "default_model",
    "from_fhir_patient",
    "load_model",
]
