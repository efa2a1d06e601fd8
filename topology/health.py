"""Liveness, readiness and metrics over HTTP for every clinstream process.

A stdlib ``ThreadingHTTPServer`` in a daemon thread: it works unchanged beside
an asyncio loop (Faust worker, aiohttp FHIR ingest) and beside blocking code
(confluent-kafka sinks), and a stuck event loop cannot stop ``/metrics`` from
answering, which is what you want while diagnosing that very hang.

Endpoints (GET/HEAD only, nothing else is served, so nothing needs auth):
``/healthz`` 200 while the process runs; ``/readyz`` 200 when every readiness
check passes, else 503 with ``{"status": "not ready", "failing": {...}}``;
``/metrics`` Prometheus exposition of the default registry.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

Check = Callable[[], bool]


class OpsSettings(BaseSettings):
    """Where the ops endpoint listens (env prefix ``CLINSTREAM_OPS_``)."""

    model_config = SettingsConfigDict(env_prefix="CLINSTREAM_OPS_", extra="ignore")

    # All interfaces: the kubelet and Prometheus reach the pod IP, not loopback.
    host: str = "0.0.0.0"
    port: int = Field(default=9108, ge=0, le=65535)


class _Flag:
    """A readiness check whose state the process sets (e.g. "agent started")."""

    def __init__(self, value: bool) -> None:
        self.value = value

    def __call__(self) -> bool:
        return self.value


class HealthServer:
    """Serves /healthz, /readyz and /metrics; ``port=0`` binds a free port."""

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = 9108,
        checks: Mapping[str, Check] | None = None,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._host = host
        self._requested_port = port
        self._checks: dict[str, Check] = dict(checks or {})
        self._lock = threading.Lock()
        self._registry = registry
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(
        cls, settings: OpsSettings | None = None, checks: Mapping[str, Check] | None = None
    ) -> HealthServer:
        s = settings or OpsSettings()
        return cls(s.host, s.port, checks)

    # --- readiness --------------------------------------------------------

    def add_check(self, name: str, check: Check) -> None:
        with self._lock:
            self._checks[name] = check

    def set_ready(self, name: str, ready: bool) -> None:
        """Register or update a flag check, e.g. ``set_ready("listener", True)`` once bound."""
        with self._lock:
            current = self._checks.get(name)
            if isinstance(current, _Flag):
                current.value = ready
            else:
                self._checks[name] = _Flag(ready)

    def failing(self) -> dict[str, str]:
        """Names of failing checks with why; a check that raises is failing, not fatal."""
        with self._lock:
            checks = list(self._checks.items())
        out: dict[str, str] = {}
        for name, check in checks:
            try:
                if not check():
                    out[name] = "not ready"
            except Exception as exc:
                out[name] = f"{type(exc).__name__}: {exc}"
        return out

    # --- lifecycle -------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        if self._server is not None:
            return self
        handler = type("_BoundHandler", (_Handler,), {"owner": self})
        self._server = ThreadingHTTPServer((self._host, self._requested_port), handler)
        self._server.daemon_threads = True
        # A short poll keeps stop() (and so process shutdown) quick.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="clinstream-health", daemon=True
        )
        self._thread.start()
        log.info("ops endpoint on %s:%d (/healthz /readyz /metrics)", self._host, self.port)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    owner: ClassVar[HealthServer]
    server_version = "clinstream-ops"
    sys_version = ""

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(200, "application/json", b'{"status":"ok"}', body)
        elif path == "/readyz":
            failing = self.owner.failing()
            if failing:
                payload = json.dumps({"status": "not ready", "failing": failing}).encode()
                self._send(503, "application/json", payload, body)
            else:
                self._send(200, "application/json", b'{"status":"ready"}', body)
        elif path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(200, content_type, encoder(self.owner._registry), body)
        else:
            self._send(404, "application/json", b'{"status":"not found"}', body)

    def _send(self, code: int, content_type: str, payload: bytes, body: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        # Probes hit these endpoints every few seconds; access logs would drown real logs.
        log.debug("%s " + format, self.address_string(), *args)


def broker_check(bootstrap_conf: dict[str, object], cache_s: float = 5.0) -> Check:
    """A readiness check that the cluster answers metadata (cached so probes stay cheap)."""
    import time

    from confluent_kafka.admin import AdminClient

    admin = AdminClient({**bootstrap_conf, "socket.timeout.ms": 2000})
    state = {"at": 0.0, "ok": False}

    def check() -> bool:
        now = time.monotonic()
        if now - state["at"] > cache_s:
            try:
                state["ok"] = bool(admin.list_topics(timeout=2).brokers)
            except Exception:
                state["ok"] = False
            state["at"] = now
        return bool(state["ok"])

    return check
