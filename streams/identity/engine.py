"""The MPI matching engine: deterministic links first, Fellegi-Sunter second, three bands.

Storage model (so the in-memory index can be swapped for a Faust table / key-value store)
---------------------------------------------------------------------------------------
All state lives in a :class:`KeyValueStore` with ``get(key)`` / ``put(key, value)`` of
small JSON-serialisable values (strings and lists of strings). Key namespaces:

``b:<blocking key>``  → ``[euid, ...]``        entities emitting that blocking key (capped at
                                               ``max_block_size``; a full block is ignored
                                               at lookup because it no longer discriminates)
``e:<euid>``          → ``[[feature...], ...]`` the member records' feature vectors
                                               (:func:`comparisons.features`), no raw PHI
``i:<system>|<value>``→ ``euid``               source identifier (assigning authority) index
``x:ssn|<ssn>``       → ``euid``               strong-identifier index
``r:<source>|<id>``   → ``euid``               where a source record already went
``m:<retired euid>``  → ``euid``               merge forwarding pointer (followed on read)

``put(key, None)`` deletes a key.

The identity agent partitions by blocking key: a lookup reads the ``b:`` keys of the
record, then the ``e:`` entries of the candidates. Writes are idempotent puts, so a replayed
record yields the same EUID (``r:`` short-circuits and the id factory is deterministic).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from schemas.ids import uuid5_hex
from streams.identity.blocking import blocking_keys
from streams.identity.comparisons import _FUNCS, COMPARISONS, F_IDENTS, F_REF, F_SSN, Features, features
from streams.identity.em import TF_COMPARISONS
from streams.identity.model import MatchModel
from streams.identity.record import PatientRecord

AUTO_LINK = "auto-link"
REVIEW = "review"
NEW = "new"

# A partial SSN (say the last four typed into the SSN field) must never link on its own.
MIN_STRONG_SSN_DIGITS = 7
EUID_NAMESPACE = uuid.UUID("6f1c1f0e-7f0a-5a55-9c1d-5b0e1d3a9e11")
_SSN_INDEX = _FUNCS.index(COMPARISONS[-1].compare) if COMPARISONS[-1].name == "ssn" else -1
# Feature positions worth interning: names, codes, dates and places repeat across patients.
_INTERN: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 15, 16)


class KeyValueStore(Protocol):
    def get(self, key: str, default: Any = None, /) -> Any: ...

    def put(self, key: str, value: Any) -> None: ...


class MemoryStore(dict[str, Any]):
    """dict-backed store; ``get`` is dict.get (C speed on the hot path)."""

    def put(self, key: str, value: Any) -> None:
        if value is None:
            self.pop(key, None)
        else:
            self[key] = value


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Match-probability cut-offs: ≥ auto_link links, ≥ review queues for a human, else new.

    ``strong_id_min_weight``: a strong identifier (full SSN) links deterministically only if
    the rest of the demographics do not argue against it (their summed weight ≥ this);
    otherwise the pair goes to review — shared or mistyped SSNs are a known MPI hazard.
    """

    auto_link: float = 0.99
    review: float = 0.5
    strong_id_min_weight: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.review <= self.auto_link <= 1.0:
            raise ValueError("thresholds must satisfy 0 <= review <= auto_link <= 1")

    def band(self, probability: float) -> str:
        if probability >= self.auto_link:
            return AUTO_LINK
        if probability >= self.review:
            return REVIEW
        return NEW


@dataclass(frozen=True, slots=True)
class Candidate:
    euid: str
    record_ref: str  # "source|record_id" of the best-scoring member
    match_weight: float  # log2 Bayes factor, prior included
    probability: float


@dataclass(frozen=True, slots=True)
class Resolution:
    band: str  # 'auto-link' | 'review' | 'new'
    euid: str | None  # the record's EUID (None from resolve() when band != auto-link)
    best_candidate: Candidate | None
    score: float  # match probability of the best candidate (1.0 for deterministic links)
    deterministic: bool
    reasons: tuple[str, ...]  # level labels / rule names; never PHI values
    candidates_compared: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for ``mpi.links`` events and review tasks (no PHI inside)."""
        best = self.best_candidate
        return {
            "band": self.band,
            "euid": self.euid,
            "score": self.score,
            "deterministic": self.deterministic,
            "reasons": list(self.reasons),
            "candidates_compared": self.candidates_compared,
            "best_candidate": None
            if best is None
            else {
                "euid": best.euid,
                "record_ref": best.record_ref,
                "match_weight": best.match_weight,
                "probability": best.probability,
            },
        }


def default_euid_factory(record: PatientRecord) -> str:
    """Stable EUID from the founding record's first source identifier (or its record id)."""
    seed = record.identifiers[0].key() if record.identifiers else f"{record.source}|{record.record_id}"
    return uuid5_hex(EUID_NAMESPACE, seed)


class MatchEngine:
    def __init__(
        self,
        model: MatchModel,
        thresholds: Thresholds | None = None,
        store: KeyValueStore | None = None,
        *,
        id_factory: Callable[[PatientRecord], str] = default_euid_factory,
        strong_identifiers: Iterable[str] = ("ssn",),
        max_block_size: int = 1000,
    ) -> None:
        self.model = model
        self.thresholds = thresholds or Thresholds()
        self.store: KeyValueStore = store if store is not None else MemoryStore()
        self.id_factory = id_factory
        self.strong_identifiers = frozenset(strong_identifiers)
        self.max_block_size = max_block_size
        self._table = model.weight_table()
        self._prior = model.prior_weight
        self._labels = [[f"{c.name}:{level}" for level in c.levels] for c in COMPARISONS]
        names = [c.name for c in COMPARISONS]
        # (comparison index, feature position, value → adjustment) for term frequencies.
        self._tf = [
            (names.index(name), pos, adj)
            for name, pos in TF_COMPARISONS.items()
            if (adj := model.tf_adjustments.get(name))
        ]

    def _query_table(self, feats: list[str]) -> list[list[float]]:
        """Weight table for one query record: exact-match weights of common names lowered.

        An exact match means both sides hold the query's value, so the adjustment depends on
        the query alone and is folded into a per-query copy of the table (hot loop unchanged).
        """
        table = self._table
        for k, pos, adj in self._tf:
            delta = adj.get(feats[pos])
            if delta:
                if table is self._table:
                    table = list(table)
                row = list(table[k])
                row[1] += delta
                table[k] = row
        return table

    def _scorers(self, feats: list[str]) -> list[tuple[Callable[[Features, Features], int], list[float]]]:
        """(comparison, its weights for this query) pairs, built once per query: the scoring loops
        run them for every member of every candidate, where a ``zip`` per member was measurable."""
        return list(zip(_FUNCS, self._query_table(feats), strict=True))

    # ----------------------------------------------------------------- scoring
    def pair_weight(self, a: list[str], b: list[str]) -> float:
        """Posterior log2-odds that two feature vectors are the same person."""
        total = self._prior
        for f, w in zip(_FUNCS, self._query_table(a), strict=True):
            total += w[f(a, b)]
        return total

    def explain(self, a: list[str], b: list[str]) -> tuple[str, ...]:
        """``comparison:level`` for every non-null comparison of a pair (labels only, no PHI).

        The weight of each is ``model.weight_table()``; reviewers see which fields agreed.
        """
        out = []
        for f, labels in zip(_FUNCS, self._labels, strict=True):
            level = f(a, b)
            if level:
                out.append(labels[level])
        return tuple(out)

    def candidate_euids(self, feats: list[str], keys: list[str] | None = None) -> set[str]:
        """``keys``: ``blocking_keys(feats)`` when the caller already has them."""
        get = self.store.get
        cap = self.max_block_size
        found: set[str] = set()
        for key in blocking_keys(feats) if keys is None else keys:
            block = get("b:" + key)
            if block and len(block) < cap:
                found.update(block)
        return found

    def score_candidates(self, feats: list[str], keys: list[str] | None = None) -> list[tuple[str, str, float]]:
        """(euid, member record ref, match weight) for every member of every candidate entity."""
        get = self.store.get
        scorers = self._scorers(feats)
        prior = self._prior
        out: list[tuple[str, str, float]] = []
        for euid in self.candidate_euids(feats, keys):
            for member in get("e:" + euid) or ():
                total = prior
                for f, w in scorers:
                    total += w[f(feats, member)]
                out.append((euid, member[F_REF], total))
        return out

    # ----------------------------------------------------------------- resolve
    def resolve(self, record: PatientRecord) -> Resolution:
        """Decide where ``record`` belongs without changing the index."""
        return self._resolve(record, features(record))

    def _resolve(self, record: PatientRecord, feats: list[str], keys: list[str] | None = None) -> Resolution:
        get = self.store.get
        # 1. The same source record seen before: idempotent replays and updates.
        known = get("r:" + feats[F_REF])
        if known is not None:
            return Resolution(AUTO_LINK, self.current_euid(known), None, 1.0, True, ("same-source-record",))
        # 2. Assigning authority + identifier.
        hits = {get("i:" + ident.key()) for ident in record.identifiers}
        hits.discard(None)
        if hits:
            hits = {self.current_euid(h) for h in hits}
        if len(hits) == 1:
            euid = hits.pop()
            return self._identifier_link(feats, euid)
        if len(hits) > 1:
            # Two entities claim this record's identifiers: a potential duplicate for a human.
            best = sorted(hits)[0]
            cand = Candidate(best, "", 0.0, 1.0)
            return Resolution(REVIEW, None, cand, 1.0, True, ("identifier-conflict", *sorted(hits)))
        # 3. Probabilistic, with strong identifiers checked against the demographics.
        scored = self.score_candidates(feats, keys)
        strong_euid = None
        if "ssn" in self.strong_identifiers and len(feats[F_SSN]) >= MIN_STRONG_SSN_DIGITS:
            strong_euid = get("x:ssn|" + feats[F_SSN])
            if strong_euid is not None:
                strong_euid = self.current_euid(strong_euid)
        best_by_euid: dict[str, tuple[float, str]] = {}
        for euid, ref, weight in scored:
            prev = best_by_euid.get(euid)
            if prev is None or weight > prev[0]:
                best_by_euid[euid] = (weight, ref)
        if strong_euid is not None:
            demo = self._strong_id_support(feats, strong_euid)
            if demo >= self.thresholds.strong_id_min_weight:
                hit = best_by_euid.get(strong_euid)
                strong = None if hit is None else Candidate(strong_euid, hit[1], hit[0], self.model.probability(hit[0]))
                return Resolution(AUTO_LINK, strong_euid, strong, 1.0, True, ("strong-identifier:ssn",), len(scored))
        if not best_by_euid:
            return Resolution(NEW, None, None, 0.0, False, ("no-candidates",), 0)
        ranked = sorted(best_by_euid.items(), key=lambda kv: kv[1][0], reverse=True)
        euid, (weight, ref) = ranked[0]
        prob = self.model.probability(weight)
        band = self.thresholds.band(prob)
        cand = Candidate(euid, ref, weight, prob)
        reasons: list[str] = []
        if strong_euid is not None:
            reasons.append("strong-identifier-contradicted:ssn")
            band = REVIEW if band == NEW else band
        best_member = next(m for m in get("e:" + euid) if m[F_REF] == ref)
        reasons.extend(self.explain(feats, best_member))
        if len(ranked) > 1 and self.model.probability(ranked[1][1][0]) >= self.thresholds.auto_link:
            reasons.append("also-matches:" + ranked[1][0])  # index holds a likely duplicate
        return Resolution(band, euid if band == AUTO_LINK else None, cand, prob, False, tuple(reasons), len(scored))

    def _identifier_link(self, feats: list[str], euid: str) -> Resolution:
        """An assigning authority's identifier is authoritative, but a record whose
        demographics contradict its entity (MRN reuse, wrong-patient registration) is
        flagged in the reasons so the agent can raise a data-quality task.
        """
        best: Candidate | None = None
        scorers = self._scorers(feats)
        for member in self.store.get("e:" + euid) or ():
            total = self._prior
            for f, w in scorers:
                total += w[f(feats, member)]
            if best is None or total > best.match_weight:
                best = Candidate(euid, member[F_REF], total, self.model.probability(total))
        reasons: tuple[str, ...] = ("identifier",)
        # The identifier already settles the prior, so judge the demographics by their Bayes
        # factor alone: below 1 (log2 < 0) they argue for two different people.
        if best is not None and best.match_weight - self._prior < 0:
            reasons = ("identifier", "identifier-demographics-disagree")
        return Resolution(AUTO_LINK, euid, best, 1.0, True, reasons)

    def _strong_id_support(self, feats: list[str], euid: str) -> float:
        """Best demographic weight (SSN excluded) of the entity holding the same strong id."""
        best = float("-inf")
        scorers = [s for i, s in enumerate(self._scorers(feats)) if i != _SSN_INDEX]
        for member in self.store.get("e:" + euid) or ():
            total = 0.0
            for f, w in scorers:
                total += w[f(feats, member)]
            best = max(best, total)
        return best

    # ----------------------------------------------------------------- writes
    def add(self, record: PatientRecord) -> Resolution:
        """Resolve and commit: auto-link joins the entity, review/new founds a new EUID.

        A review-band record gets its own EUID (so downstream keeps flowing) and the
        resolution names the candidate a human should compare it with.
        """
        feats = features(record)
        keys = blocking_keys(feats)  # once: the lookup and the index writes use the same keys
        res = self._resolve(record, feats, keys)
        if res.band == AUTO_LINK and res.euid is not None:
            self.index_features(record, feats, res.euid, keys)
            return res
        euid = self.id_factory(record)
        self.index_features(record, feats, euid, keys)
        return Resolution(
            res.band,
            euid,
            res.best_candidate,
            res.score,
            res.deterministic,
            res.reasons,
            res.candidates_compared,
        )

    def index_record(self, record: PatientRecord, euid: str | None = None) -> str:
        """Put a record into the index under ``euid`` (a fresh one by default) without matching.

        For bulk loads of already-deduplicated registers and for pairwise evaluation.
        """
        euid = euid or self.id_factory(record)
        self.index_features(record, features(record), euid)
        return euid

    def index_features(self, record: PatientRecord, feats: list[str], euid: str,
                       keys: list[str] | None = None) -> None:
        """``keys``: ``blocking_keys(feats)`` when the caller already has them."""
        store = self.store
        get = store.get
        feats = list(feats)
        intern = sys.intern
        for i in _INTERN:  # testing every position for membership instead cost five times the interning
            feats[i] = intern(feats[i])
        ref = feats[F_REF]
        members = get("e:" + euid)
        if members and get("r:" + ref) == euid:
            # A re-sent source record replaces its previous demographics in the entity; if the
            # entity already holds them, nothing is written (each write is a changelog record
            # every worker applies).
            if feats not in members:
                store.put("e:" + euid, [*(m for m in members if m[F_REF] != ref), feats])
        else:
            store.put("e:" + euid, [*members, feats] if members else [feats])
            store.put("r:" + ref, euid)
        for ident in record.identifiers:
            key = "i:" + ident.key()
            if get(key) is None:
                store.put(key, euid)
        if len(feats[F_SSN]) >= MIN_STRONG_SSN_DIGITS and "ssn" in self.strong_identifiers:
            key = "x:ssn|" + feats[F_SSN]
            if get(key) is None:
                store.put(key, euid)
        cap = self.max_block_size
        for bkey in blocking_keys(feats) if keys is None else keys:
            key = "b:" + bkey
            block = get(key)
            if block is None:
                store.put(key, [euid])
            elif euid not in block and len(block) < cap:
                store.put(key, [*block, euid])

    # ----------------------------------------------------------------- merge / unmerge
    def current_euid(self, euid: str) -> str:
        """Follow merge forwarding pointers (``m:``) to the surviving EUID."""
        get = self.store.get
        for _ in range(64):  # a chain longer than this means a cycle: stop rather than spin
            nxt = get("m:" + euid)
            if nxt is None:
                return euid
            euid = nxt
        return euid

    def members(self, euid: str) -> list[list[str]]:
        return list(self.store.get("e:" + self.current_euid(euid)) or [])

    def merge(self, survivor: str, retired: str) -> str:
        """Fold ``retired`` into ``survivor`` (ADT^A40, FHIR ``Patient.link`` replaced-by).

        Every index entry of the retired entity is re-pointed; ``m:<retired>`` forwards
        anything still holding the old EUID. Returns the surviving EUID.
        """
        store, get = self.store, self.store.get
        survivor, retired = self.current_euid(survivor), self.current_euid(retired)
        if survivor == retired:
            return survivor
        kept, moved = get("e:" + survivor), get("e:" + retired)
        if kept is None or moved is None:
            raise KeyError("unknown EUID")
        store.put("e:" + survivor, [*kept, *moved])
        store.put("e:" + retired, None)
        store.put("m:" + retired, survivor)
        for member in moved:
            self._repoint(member, retired, survivor)
            for bkey in blocking_keys(member):
                key = "b:" + bkey
                block = get(key)
                if block and retired in block:
                    updated = [e for e in block if e != retired]
                    if survivor not in updated:
                        updated.append(survivor)
                    store.put(key, updated)
        return survivor

    def unmerge(self, euid: str, record_ref: str, new_euid: str | None = None) -> str:
        """Split one member record (``source|record_id``) out into its own entity."""
        store, get = self.store, self.store.get
        euid = self.current_euid(euid)
        members = get("e:" + euid) or []
        member = next((m for m in members if m[F_REF] == record_ref), None)
        if member is None:
            raise KeyError("record is not a member of this EUID")
        rest = [m for m in members if m[F_REF] != record_ref]
        if not rest:
            return euid  # already alone
        new = new_euid or uuid5_hex(EUID_NAMESPACE, "unmerge|" + record_ref)
        store.put("e:" + euid, rest)
        store.put("e:" + new, [member])
        self._repoint(member, euid, new)
        if member[F_SSN] and any(m[F_SSN] == member[F_SSN] for m in rest):
            store.put("x:ssn|" + member[F_SSN], euid)  # still held by a remaining member
        remaining_keys = {k for m in rest for k in blocking_keys(m)}
        cap = self.max_block_size
        for bkey in blocking_keys(member):
            key = "b:" + bkey
            block = list(get(key) or [])
            if bkey not in remaining_keys and euid in block:
                block.remove(euid)
            if new not in block and len(block) < cap:
                block.append(new)
            store.put(key, block)
        return new

    def _repoint(self, member: list[str], old: str, new: str) -> None:
        store, get = self.store, self.store.get
        store.put("r:" + member[F_REF], new)
        for ident in filter(None, member[F_IDENTS].split("\n")):
            if get("i:" + ident) == old:
                store.put("i:" + ident, new)
        if member[F_SSN] and get("x:ssn|" + member[F_SSN]) == old:
            store.put("x:ssn|" + member[F_SSN], new)
