"""The identity stage: ``dedup.events`` -> ``identified.events`` keyed by EUID.

Partitioning. The index (``streams.identity.engine`` key namespaces ``b:``
blocking keys, ``e:`` entity features, ``i:`` identifiers, ``r:`` source
records, ``m:`` merge aliases, ``g:`` golden records) lives in a Faust
*GlobalTable* in the worker: every identity worker holds the whole index, so the
candidates for a record are always found on the worker (and partition) that
processes it, whatever blocking key would find them. Writes go to the table's
changelog partition of the record being processed (``dedup.events`` is keyed by
the source patient id, so one source identity is always resolved by the same
partition and cannot race with itself). Two *different* source records of the
same new person processed at the same instant on two workers can both found an
EUID; the next record that matches both reports ``also-matches`` and the pair
goes to review — a missed link is preferred to a false merge.

Merges: a ``Patient.link`` of type ``replaces`` (ADT^A40/A41/A47 MRG, FHIR
merge) folds the replaced EUID into the surviving one (``MatchEngine.merge``:
index entries re-pointed, an ``m:`` forwarding key left behind); every later
event for the old identifiers is keyed by the survivor, and a ``merge`` event
on ``mpi.links`` tells downstream systems to re-key history.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from schemas import headers as H
from schemas import metrics
from schemas.envelope import encode_event, restamped_headers, utc_now_iso
from streams.identity.engine import AUTO_LINK, REVIEW, KeyValueStore, MatchEngine, MemoryStore, Resolution
from streams.identity.model import default_model
from streams.identity.record import Identifier, from_fhir_patient
from streams.identity.review import DECISION
from streams.stage import InRecord, Outcome, Output, event_of
from topology.model import DEDUPED, IDENTIFIED, MPI_LINKS, MPI_PATIENTS, MPI_REVIEW


def _survivor(patients: list[dict[str, Any]]) -> dict[str, Any]:
    """The patient the event is about: not a merged-away prior record (``replaced-by`` link)."""
    for p in patients:
        if not any(link.get("type") == "replaced-by" for link in p.get("link") or ()):
            return p
    return patients[0]


def _replaced_identifiers(patient: dict[str, Any], resources: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Identifiers of the records ``patient`` replaces (by reference into the bundle, or inline)."""
    if not patient.get("link"):
        return []  # the common case: no merge, so no index of the bundle's patients to build
    by_ref = {f"Patient/{r.get('id')}": r for r in resources if r.get("resourceType") == "Patient"}
    by_ref.update({f"urn:uuid:{r.get('id')}": r for r in resources if r.get("resourceType") == "Patient"})
    out: list[tuple[str, str]] = []
    for link in patient.get("link") or ():
        if link.get("type") != "replaces":
            continue
        other = link.get("other") or {}
        target = by_ref.get(other.get("reference") or "")
        idents = (target or {}).get("identifier") or ([other["identifier"]] if other.get("identifier") else [])
        out += [(i.get("system") or "", i["value"]) for i in idents if i.get("value")]
    return out


@dataclass
class IdentityStage:
    engine: MatchEngine
    input_topics: Sequence[str] = (DEDUPED, MPI_REVIEW)
    output_topic: str = IDENTIFIED
    name: str = "identity"

    @classmethod
    def with_store(cls, store: KeyValueStore | None = None, **kwargs: Any) -> IdentityStage:
        return cls(engine=MatchEngine(default_model(), store=store if store is not None else MemoryStore()),
                   **kwargs)

    @property
    def store(self) -> KeyValueStore:
        return self.engine.store

    def flush(self) -> list[Output]:
        """End of batch: a write-behind store (the worker's replicated index) writes out now; its
        changelog records are outputs of the batch."""
        flush = getattr(self.engine.store, "flush", None)
        return list(flush() or ()) if flush is not None else []

    def process(self, record: InRecord) -> Outcome:
        if record.topic == MPI_REVIEW:
            return self._apply_decision(record)
        event = event_of(record)
        patients = [r for r in event["resources"] if r.get("resourceType") == "Patient"]
        event["lineage"]["stages"] = [*event["lineage"]["stages"], "identity"]
        hdrs = H.encode(restamped_headers(record.headers))
        if not patients:
            # nothing to resolve (e.g. a master-file message): forward under the source key
            return Outcome.forward(Output(self.output_topic, encode_event(event), record.key, hdrs, event))
        patient = _survivor(patients)
        rec = from_fhir_patient(patient, event["source"])
        resolution = self.engine.add(rec)
        assert resolution.euid is not None
        euid = self.engine.current_euid(resolution.euid)
        metrics.mpi_decision(resolution.band)
        key = euid.encode()
        outputs: list[Output] = []
        now = utc_now_iso()
        link_type = {AUTO_LINK: "link", REVIEW: "review-needed"}.get(resolution.band, "new")
        ref = f"{rec.source}|{rec.record_id}"
        link = self._link_event(link_type, euid, ref, resolution, event["event_id"], now)
        outputs.append(Output(MPI_LINKS, orjson.dumps(link), key))
        if resolution.band == REVIEW and resolution.best_candidate is not None:
            outputs.append(Output(MPI_REVIEW, orjson.dumps({
                "type": "review-request",
                "review_id": f"{event['event_id']}:{resolution.best_candidate.euid}",
                "euid": euid,
                "candidate_euid": self.engine.current_euid(resolution.best_candidate.euid),
                "score": resolution.score,
                "reasons": list(resolution.reasons),
                "event_id": event["event_id"],
                "at": now,
            }), key))
        for system, value in _replaced_identifiers(patient, event["resources"]):
            old = self.store.get("i:" + Identifier(system, value, "").key())
            if old is not None and self.engine.current_euid(old) != euid:
                retired = self.engine.current_euid(old)
                self.engine.merge(euid, retired)
                outputs.append(Output(MPI_LINKS, orjson.dumps({
                    "type": "merge", "from_euid": retired, "to_euid": euid, "event_id": event["event_id"], "at": now,
                }), key))
        golden = self._golden(euid, patient, event)
        outputs.append(Output(MPI_PATIENTS, orjson.dumps(golden), key))
        event["patient"]["euid"] = euid
        outputs.insert(0, Output(self.output_topic, encode_event(event), key, hdrs, event))
        return Outcome.forward(*outputs)

    def _apply_decision(self, record: InRecord) -> Outcome:
        """An accepted review merges the newer EUID into the candidate; everything else is ignored."""
        link = orjson.loads(record.value)
        if link.get("type") != DECISION or link.get("decision") != "accept":
            return Outcome.drop("review-request")
        survivor = self.engine.current_euid(link["candidate_euid"])
        merged = self.engine.current_euid(link["euid"])
        if survivor == merged:
            return Outcome.drop("already-merged")
        self.engine.merge(survivor, merged)
        merge = {"type": "merge", "from_euid": merged, "to_euid": survivor, "review_id": link.get("review_id"),
                 "at": utc_now_iso()}
        return Outcome.forward(Output(MPI_LINKS, orjson.dumps(merge), survivor.encode()))

    @staticmethod
    def _link_event(kind: str, euid: str, ref: str, res: Resolution, event_id: str, at: str) -> dict[str, Any]:
        return {
            "type": kind,
            "euid": euid,
            "record": ref,
            "band": res.band,
            "score": round(res.score, 6),
            "deterministic": res.deterministic,
            "reasons": list(res.reasons),
            "candidate_euid": res.best_candidate.euid if res.best_candidate else None,
            "event_id": event_id,
            "at": at,
        }

    def _golden(self, euid: str, patient: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
        """Golden record: latest demographics, union of identifiers across linked source records."""
        prior = self.store.get("g:" + euid) or {}
        identifiers = {(i.get("system"), i.get("value")): i for i in prior.get("identifier", ())}
        for ident in patient.get("identifier") or ():
            identifiers[(ident.get("system"), ident.get("value"))] = ident
        golden = {k: v for k, v in patient.items() if k not in ("id", "link", "meta", "text")}
        golden.update({
            "resourceType": "Patient",
            "id": euid,
            "identifier": list(identifiers.values()),
            "meta": {"lastUpdated": event.get("received_at") or utc_now_iso(), "source": event["source"]},
        })
        self.store.put("g:" + euid, {"identifier": golden["identifier"], "updated": time.time()})
        return golden
