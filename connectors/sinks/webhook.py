"""Webhook sink: POST each event as JSON with an ``Idempotency-Key`` equal to its event id.

Exactly-once effect by idempotence: the receiver must treat a repeated key as the same
delivery (the usual contract of payment and messaging APIs), so replays after a crash
are harmless and offsets come from the consumer group (``stores_offsets = False``).
Events are posted one by one in partition order. A 4xx sends just that event to the DLQ;
5xx/429/timeouts are retried with backoff + jitter and a circuit breaker. With
``secret_env`` set, the body is signed: ``X-Clinstream-Signature: sha256=<hex HMAC>``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

import orjson
from pydantic import Field, field_validator

from connectors.sinks.base import Sink, SinkBatch, SinkOptions
from connectors.sinks.errors import SinkConfigError
from connectors.sinks.http import CircuitBreaker, HttpTarget
from connectors.sinks.registry import register_sink

IDEMPOTENCY_HEADER = "Idempotency-Key"
SIGNATURE_HEADER = "X-Clinstream-Signature"


class WebhookOptions(SinkOptions):
    url: str = Field(description="endpoint receiving one POST per event")
    timeout_s: float = Field(default=10.0, gt=0)
    retries: int = Field(default=2, ge=0, le=10)
    breaker_failures: int = Field(default=5, ge=1)
    breaker_reset_s: float = Field(default=30.0, gt=0)
    secret_env: str | None = Field(default=None, description="env var holding the HMAC-SHA256 signing secret")
    headers: dict[str, str] = Field(default_factory=dict)
    verify_tls: bool = True

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value


@register_sink("webhook")
class WebhookSink(Sink):
    Options = WebhookOptions
    stores_offsets = False
    options: WebhookOptions

    def __init__(self, options: WebhookOptions, destination: str, settings: Any = None) -> None:  # type: ignore[override]
        super().__init__(options, destination, settings)
        self._secret: bytes | None = None
        if options.secret_env:
            secret = os.environ.get(options.secret_env)
            if not secret:
                raise SinkConfigError("sink.options.secret_env", f"env {options.secret_env} is empty")
            self._secret = secret.encode()
        self.target = HttpTarget(
            options.url, timeout_s=options.timeout_s, headers=options.headers, retries=options.retries,
            breaker=CircuitBreaker(options.breaker_failures, options.breaker_reset_s), verify_tls=options.verify_tls,
        )
        self.posted = 0

    def stop(self) -> None:
        self.target.close()

    def health(self) -> dict[str, Any]:
        return {"sink": self.kind, "destination": self.destination, "ok": self.target.breaker.state != "open",
                "circuit": self.target.breaker.state, "posted": self.posted}

    def committed_offsets(self, topic: str, partitions: list[int]) -> dict[int, int]:
        return {}

    def write(self, batches: list[SinkBatch]) -> None:
        for batch in batches:
            for rec in batch.records:
                body = orjson.dumps(rec.event)
                headers = {
                    IDEMPOTENCY_HEADER: rec.event_id,
                    "X-Clinstream-Event-Type": str(rec.event.get("event_type", "")),
                    "X-Clinstream-Destination": self.destination,
                }
                if self._secret is not None:
                    digest = hmac.new(self._secret, body, hashlib.sha256).hexdigest()
                    headers[SIGNATURE_HEADER] = f"sha256={digest}"
                # Events already posted in this batch are posted again on a retry: the key makes that safe.
                self.target.request("POST", "", json_body=orjson.Fragment(body), headers=headers,
                                    reject_offsets=[(batch.partition, rec.offset)])
                self.posted += 1
