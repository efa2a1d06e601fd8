"""FHIR server sink: each event's resources PUT with deterministic ids in transaction Bundles.

Exactly-once effect by idempotence, not by stored offsets: every resource gets a
deterministic id (its own id when it has a valid one, else uuid5 over event id, position
and type), and is written with ``PUT <type>/<id>`` (update-as-create). Replaying an event
writes the same resources to the same ids; a server that skips no-op updates (HAPI, the
cloud FHIR APIs) does not even create a new version. So the runner resumes from the
group's committed offsets (``stores_offsets = False``) and a crash only replays a little.

One ``transaction`` Bundle per write, all-or-nothing on the server: a rejected Bundle
(4xx) writes nothing; if it held several events the runner isolates the offender by
retrying event by event, and only that one goes to the DLQ. Resources written by several
events of one batch are sent once, in their last (newest) version, because a transaction
may not touch the same resource twice. 5xx/429/timeouts are retried with backoff and a
circuit breaker (see ``connectors.sinks.http``).
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from typing import Any

from pydantic import Field, field_validator

from connectors.sinks.base import Sink, SinkBatch, SinkOptions
from connectors.sinks.errors import SinkConfigError, SinkRejected
from connectors.sinks.http import CircuitBreaker, HttpTarget
from connectors.sinks.registry import register_sink
from schemas.ids import uuid5_str

log = logging.getLogger(__name__)

FHIR_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
ID_NAMESPACE = uuid.UUID("0b7c5f1e-3d7a-4a53-8f4e-6c2d1f0e9a21")
SOURCE_PREFIX = "urn:clinstream:event:"


class FhirOptions(SinkOptions):
    base_url: str = Field(description="FHIR R4 base, e.g. https://fhir.example.org/fhir")
    max_bundle_entries: int = Field(default=500, ge=1, le=10_000)
    timeout_s: float = Field(default=15.0, gt=0)
    retries: int = Field(default=2, ge=0, le=10, description="in-call retries before the runner's backoff")
    breaker_failures: int = Field(default=5, ge=1)
    breaker_reset_s: float = Field(default=30.0, gt=0)
    bearer_token_env: str | None = Field(default=None, description="env var holding an OAuth bearer token")
    headers: dict[str, str] = Field(default_factory=dict)
    verify_tls: bool = True

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")


def resource_id(event_id: str, index: int, resource: dict[str, Any]) -> str:
    """The id a resource is written under: stable across replays of the same event."""
    rid = resource.get("id")
    if isinstance(rid, str) and FHIR_ID_RE.match(rid):
        return rid
    basis = f"{event_id}/{index}/{resource.get('resourceType')}/{rid or ''}"
    return uuid5_str(ID_NAMESPACE, basis)


@register_sink("fhir")
class FhirSink(Sink):
    Options = FhirOptions
    stores_offsets = False
    options: FhirOptions

    def __init__(self, options: FhirOptions, destination: str, settings: Any = None) -> None:  # type: ignore[override]
        super().__init__(options, destination, settings)
        headers = {"Accept": "application/fhir+json", **options.headers}
        if options.bearer_token_env:
            token = os.environ.get(options.bearer_token_env)
            if not token:
                raise SinkConfigError("sink.options.bearer_token_env", f"env {options.bearer_token_env} is empty")
            headers["Authorization"] = f"Bearer {token}"
        self.target = HttpTarget(
            options.base_url, timeout_s=options.timeout_s, headers=headers, retries=options.retries,
            breaker=CircuitBreaker(options.breaker_failures, options.breaker_reset_s), verify_tls=options.verify_tls,
        )
        self.bundles_sent = 0
        self.resources_written = 0

    def stop(self) -> None:
        self.target.close()

    def health(self) -> dict[str, Any]:
        return {"sink": self.kind, "destination": self.destination, "ok": self.target.breaker.state != "open",
                "circuit": self.target.breaker.state, "bundles_sent": self.bundles_sent,
                "resources_written": self.resources_written}

    def committed_offsets(self, topic: str, partitions: list[int]) -> dict[int, int]:
        return {}  # idempotent writes: the group's committed offsets are good enough

    def _entries(self, batches: list[SinkBatch]) -> tuple[list[dict[str, Any]], list[tuple[int, int]]]:
        """Transaction entries in offset order, keeping the newest version of each resource."""
        by_url: dict[str, dict[str, Any]] = {}
        offsets: list[tuple[int, int]] = []
        for batch in batches:
            for rec in batch.records:
                offsets.append((batch.partition, rec.offset))
                event_id = rec.event_id
                for i, res in enumerate(rec.event.get("resources") or []):
                    rtype = res.get("resourceType") if isinstance(res, dict) else None
                    if not isinstance(rtype, str) or not rtype.isalpha():
                        raise SinkRejected(f"event {event_id}: resource #{i} has no valid resourceType",
                                           [(batch.partition, rec.offset)])
                    rid = resource_id(event_id, i, res)
                    meta = dict(res.get("meta") or {})
                    meta["source"] = SOURCE_PREFIX + event_id  # provenance: which event wrote this version
                    body = {**res, "id": rid, "meta": meta}
                    url = f"{rtype}/{rid}"
                    by_url.pop(url, None)  # re-insert so dict order follows the newest write
                    by_url[url] = {"fullUrl": f"{self.options.base_url}/{url}", "resource": body,
                                   "request": {"method": "PUT", "url": url}}
        return list(by_url.values()), offsets

    def write(self, batches: list[SinkBatch]) -> None:
        entries, offsets = self._entries(batches)
        if not entries:
            return
        # A rejection can be pinned on a record only when the bundle holds a single event.
        reject_at = offsets if len(offsets) == 1 else None
        size = self.options.max_bundle_entries
        for start in range(0, len(entries), size):
            chunk = entries[start:start + size]
            bundle = {"resourceType": "Bundle", "type": "transaction", "entry": chunk}
            resp = self.target.request("POST", "", json_body=bundle,
                                       headers={"Content-Type": "application/fhir+json"},
                                       reject_offsets=reject_at)
            result = resp.json() or {}
            if result.get("type") not in ("transaction-response", None):
                log.warning("fhir sink %s: unexpected response bundle type %s", self.destination, result.get("type"))
            self.bundles_sent += 1
            self.resources_written += len(chunk)
