"""HTTP delivery shared by the FHIR and webhook sinks: retries, circuit breaker, error classes.

Status handling (what a hospital interface engine does): 2xx delivered; 408, 425, 429
and 5xx are transient (retried here a few times with exponential backoff + jitter,
honouring ``Retry-After``, then :class:`SinkRetryable` for the runner's slower loop);
any other 4xx is a permanent refusal (:class:`SinkRejected` → DLQ). Connection errors
are transient. A circuit breaker stops hammering a target that keeps failing: after
``failure_threshold`` consecutive transient failures it opens for ``reset_s`` and calls
fail fast; then one trial call decides whether it closes again.

Standard library only (``http.client``) so the sinks add no dependency; one kept-alive
connection per sink, which is what sequential, ordered delivery needs.
"""

from __future__ import annotations

import http.client
import random
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import orjson

from connectors.sinks.errors import SinkRejected, SinkRetryable

TRANSIENT_STATUS = frozenset({408, 425, 429})


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


class CircuitOpen(SinkRetryable):
    """The target failed too often recently; not calling it until the breaker's timer runs out."""


@dataclass
class CircuitBreaker:
    failure_threshold: int = 5
    reset_s: float = 30.0
    failures: int = 0
    opened_at: float | None = None
    clock: Any = field(default=time.monotonic, repr=False)

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.reset_s else "open"

    def before_call(self) -> None:
        if self.state == "open":
            remaining = self.reset_s - (self.clock() - (self.opened_at or 0.0))
            raise CircuitOpen(f"circuit open after {self.failures} consecutive failures; retry in {remaining:.1f}s")

    def success(self) -> None:
        self.failures, self.opened_at = 0, None

    def failure(self) -> None:
        self.failures += 1
        # A failed half-open trial re-opens at once; otherwise open at the threshold.
        if self.opened_at is not None or self.failures >= self.failure_threshold:
            self.opened_at = self.clock()


class HttpTarget:
    """One base URL; ``request`` returns a 2xx response or raises SinkRetryable / SinkRejected."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 10.0,
        headers: dict[str, str] | None = None,
        retries: int = 2,
        backoff_s: float = 0.1,
        max_backoff_s: float = 2.0,
        breaker: CircuitBreaker | None = None,
        verify_tls: bool = True,
    ) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"{base_url!r} is not an http(s) URL")
        self.scheme = parsed.scheme
        self.host = parsed.hostname
        self.port = parsed.port
        self.base_path = parsed.path.rstrip("/")
        self.label = base_url
        self.query = f"?{parsed.query}" if parsed.query else ""
        self.timeout_s = timeout_s
        self.default_headers = dict(headers or {})
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.breaker = breaker or CircuitBreaker()
        self._ssl = None if verify_tls else ssl._create_unverified_context()  # noqa: S323 - opt-in for test servers
        self._conn: http.client.HTTPConnection | None = None
        self._rng = random.Random()
        self.calls = 0

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.scheme == "https":
                self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout_s,
                                                         context=self._ssl)
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _once(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> HttpResponse:
        conn = self._connection()
        try:
            url = (self.base_path + path or "/") + self.query
            conn.request(method, url, body=body, headers={**self.default_headers, **headers})
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()  # a broken keep-alive connection must not be reused
            raise SinkRetryable(f"{method} {self.label}{path}: {type(exc).__name__}: {exc}") from exc
        return HttpResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)

    def request(self, method: str, path: str, *, json_body: Any = None, headers: dict[str, str] | None = None,
                reject_offsets: list[tuple[int, int]] | None = None) -> HttpResponse:
        body = orjson.dumps(json_body) if json_body is not None else None
        hdrs = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
        attempt = 0
        while True:
            self.breaker.before_call()
            self.calls += 1
            retry_after: float | None = None
            try:
                resp = self._once(method, path, body, hdrs)
            except SinkRetryable as exc:
                error: SinkRetryable = exc
            else:
                if 200 <= resp.status < 300:
                    self.breaker.success()
                    return resp
                if resp.status in TRANSIENT_STATUS or resp.status >= 500:
                    error = SinkRetryable(f"{method} {self.label}{path}: HTTP {resp.status}: {_reason(resp)}")
                    retry_after = _retry_after(resp.headers.get("retry-after"))
                else:
                    # A permanent refusal is an answer, not an outage: it does not trip the breaker.
                    self.breaker.success()
                    raise SinkRejected(f"{method} {self.label}{path}: HTTP {resp.status}: {_reason(resp)}",
                                       reject_offsets or ())
            self.breaker.failure()
            attempt += 1
            if attempt > self.retries or self.breaker.state == "open":
                raise error
            time.sleep(retry_after if retry_after is not None
                       else backoff_delay(attempt, self.backoff_s, self.max_backoff_s, self._rng))


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with jitter for retry ``attempt`` (1-based): uniform in [cap/2, cap],
    cap = min(max_s, base_s * 2^(attempt-1)) — half jitter keeps a floor so retries do not bunch up."""
    cap = min(max_s, base_s * 2 ** (attempt - 1))
    return rng.uniform(cap / 2, cap)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return min(max(float(value), 0.0), 30.0)
    except ValueError:
        return None  # HTTP-date form: fall back to our own backoff


def _reason(resp: HttpResponse) -> str:
    """A short reason from an OperationOutcome or plain body (never the request payload: PHI)."""
    try:
        data = resp.json()
    except orjson.JSONDecodeError:
        return resp.body[:200].decode("utf-8", "replace")
    if isinstance(data, dict) and data.get("resourceType") == "OperationOutcome":
        issues = data.get("issue") or []
        return "; ".join(str(i.get("diagnostics") or i.get("code") or "") for i in issues)[:500]
    return str(data)[:200]
