"""The ops HTTP endpoint: liveness, readiness with failing checks, metrics."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import pytest

from schemas import metrics as m
from topology.health import HealthServer, OpsSettings


def get(server: HealthServer, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.fixture
def server() -> Iterator[HealthServer]:
    srv = HealthServer("127.0.0.1", 0, checks={"broker": lambda: True})
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_port_zero_binds_a_free_port(server: HealthServer) -> None:
    assert server.port > 0


def test_healthz_is_200(server: HealthServer) -> None:
    status, _, body = get(server, "/healthz")
    assert status == 200
    assert json.loads(body) == {"status": "ok"}


def test_readyz_follows_flags_and_checks(server: HealthServer) -> None:
    assert get(server, "/readyz")[0] == 200
    server.set_ready("agent", False)
    status, headers, body = get(server, "/readyz")
    assert status == 503
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"status": "not ready", "failing": {"agent": "not ready"}}
    server.set_ready("agent", True)
    assert get(server, "/readyz")[0] == 200


def test_a_raising_check_is_failing_with_its_reason(server: HealthServer) -> None:
    def broken() -> bool:
        raise ConnectionError("broker unreachable")

    server.add_check("kafka", broken)
    status, _, body = get(server, "/readyz")
    assert status == 503
    assert json.loads(body)["failing"] == {"kafka": "ConnectionError: broker unreachable"}


def test_metrics_exposes_the_catalogue(server: HealthServer) -> None:
    m.stage("health-test").records_in("src")
    status, headers, body = get(server, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    text = body.decode()
    assert 'clinstream_stage_records_in_total{source="src",stage="health-test"} 1.0' in text


def test_metrics_negotiates_openmetrics(server: HealthServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    resp = conn.getresponse()
    assert resp.getheader("Content-Type").startswith("application/openmetrics-text")
    assert resp.read().rstrip().endswith(b"# EOF")
    conn.close()


def test_head_has_no_body_and_unknown_paths_404(server: HealthServer) -> None:
    status, headers, body = get(server, "/healthz", "HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    assert get(server, "/admin")[0] == 404
    assert get(server, "/readyz?verbose=1")[0] == 200


def test_nothing_but_get_and_head_is_served(server: HealthServer) -> None:
    assert get(server, "/metrics", "POST")[0] == 501
    assert get(server, "/readyz", "DELETE")[0] == 501


def test_stop_releases_port_and_restart_works() -> None:
    srv = HealthServer("127.0.0.1", 0).start()
    port = srv.port
    srv.stop()
    with HealthServer("127.0.0.1", port) as again:
        assert get(again, "/healthz")[0] == 200


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLINSTREAM_OPS_HOST", "127.0.0.1")
    monkeypatch.setenv("CLINSTREAM_OPS_PORT", "0")
    settings = OpsSettings()
    assert (settings.host, settings.port) == ("127.0.0.1", 0)
    with HealthServer.from_settings(settings, {"x": lambda: False}) as srv:
        assert get(srv, "/readyz")[0] == 503


def test_default_settings() -> None:
    assert OpsSettings().port == 9108
