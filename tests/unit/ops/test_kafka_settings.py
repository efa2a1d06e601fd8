"""KafkaSettings: every security mode maps to librdkafka and to Faust/aiokafka alike."""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import subprocess
from collections.abc import Iterator
from urllib.parse import unquote_plus

import faust
import pytest
from aiohttp import web
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import ValidationError

from topology.oauth import ClientCredentialsTokenProvider, TokenError
from topology.settings import KafkaSettings

BOOT = "broker-1:9093,broker-2:9093"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("KAFKA_")]:
        monkeypatch.delenv(key)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A throw-away CA and client certificate (mTLS) made with the openssl CLI."""
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
        "-subj", "/CN=clinstream-worker")
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "client.crt", "-days", "2")
    yield {name: str(d / f"{name}") for name in ("ca.crt", "client.crt", "client.key")}


def from_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> KafkaSettings:
    for key, value in env.items():
        monkeypatch.setenv(f"KAFKA_{key.upper()}", value)
    return KafkaSettings()


def aiokafka_auth(settings: KafkaSettings) -> dict[str, object]:
    """What Faust hands to aiokafka for these settings."""
    return dict(credentials_to_aiokafka_auth(settings.faust_broker_kwargs().get("broker_credentials")))


def test_plaintext(monkeypatch: pytest.MonkeyPatch) -> None:
    s = from_env(monkeypatch, bootstrap_servers=BOOT)
    assert s.librdkafka() == {"bootstrap.servers": BOOT, "security.protocol": "plaintext", "client.id": "clinstream"}
    kwargs = s.faust_broker_kwargs()
    assert kwargs["broker"] == "kafka://broker-1:9093,kafka://broker-2:9093"
    assert "broker_credentials" not in kwargs
    assert kwargs["broker_session_timeout"] == 6.0


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plain_and_scram_over_sasl_ssl(
    mechanism: str, monkeypatch: pytest.MonkeyPatch, certs: dict[str, str]
) -> None:
    s = from_env(
        monkeypatch, bootstrap_servers=BOOT, security_protocol="SASL_SSL", sasl_mechanism=mechanism,
        sasl_username="worker", sasl_password="s3cret", ssl_ca_location=certs["ca.crt"],
    )
    conf = s.librdkafka()
    assert conf["security.protocol"] == "sasl_ssl"
    assert (conf["sasl.mechanism"], conf["sasl.username"], conf["sasl.password"]) == (mechanism, "worker", "s3cret")
    assert conf["ssl.ca.location"] == certs["ca.crt"]
    auth = aiokafka_auth(s)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == mechanism
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("worker", "s3cret")
    ctx = auth["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_sasl_plaintext_has_no_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    s = from_env(
        monkeypatch, bootstrap_servers=BOOT, security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512",
        sasl_username="u", sasl_password="p",
    )
    assert s.librdkafka()["security.protocol"] == "sasl_plaintext"
    auth = aiokafka_auth(s)
    assert auth["security_protocol"] == "SASL_PLAINTEXT"
    assert auth["ssl_context"] is None


def test_ssl_server_auth_only(monkeypatch: pytest.MonkeyPatch, certs: dict[str, str]) -> None:
    s = from_env(monkeypatch, bootstrap_servers=BOOT, security_protocol="SSL", ssl_ca_location=certs["ca.crt"])
    conf = s.librdkafka()
    assert conf["security.protocol"] == "ssl"
    assert "ssl.certificate.location" not in conf
    auth = aiokafka_auth(s)
    assert auth["security_protocol"] == "SSL"
    assert isinstance(auth["ssl_context"], ssl.SSLContext)


def test_mtls_maps_client_cert_to_both(monkeypatch: pytest.MonkeyPatch, certs: dict[str, str]) -> None:
    s = from_env(
        monkeypatch, bootstrap_servers=BOOT, security_protocol="SSL", ssl_ca_location=certs["ca.crt"],
        ssl_certificate_location=certs["client.crt"], ssl_key_location=certs["client.key"],
        ssl_check_hostname="false",
    )
    conf = s.librdkafka()
    assert conf["ssl.certificate.location"] == certs["client.crt"]
    assert conf["ssl.key.location"] == certs["client.key"]
    assert conf["ssl.endpoint.identification.algorithm"] == "none"
    ctx = aiokafka_auth(s)["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.check_hostname is False
    # The CA was loaded into the context (so the broker cert is verified against it).
    assert any(c["subject"] == ((("commonName", "test-ca"),),) for c in ctx.get_ca_certs())


def test_oauthbearer_maps_to_oidc_and_token_provider(monkeypatch: pytest.MonkeyPatch, certs: dict[str, str]) -> None:
    s = from_env(
        monkeypatch, bootstrap_servers=BOOT, security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER",
        sasl_oauthbearer_token_endpoint_url="https://idp.example/token", sasl_oauthbearer_client_id="clinstream",
        sasl_oauthbearer_client_secret="shh", sasl_oauthbearer_scope="kafka", ssl_ca_location=certs["ca.crt"],
    )
    conf = s.librdkafka()
    assert conf["sasl.mechanism"] == "OAUTHBEARER"
    assert conf["sasl.oauthbearer.method"] == "oidc"
    assert conf["sasl.oauthbearer.token.endpoint.url"] == "https://idp.example/token"
    assert (conf["sasl.oauthbearer.client.id"], conf["sasl.oauthbearer.client.secret"]) == ("clinstream", "shh")
    assert conf["sasl.oauthbearer.scope"] == "kafka"
    creds = s.faust_broker_kwargs()["broker_credentials"]
    assert isinstance(creds, faust.OAuthCredentials)
    auth = aiokafka_auth(s)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "OAUTHBEARER"
    provider = auth["sasl_oauth_token_provider"]
    assert isinstance(provider, ClientCredentialsTokenProvider)
    assert provider.scope == "kafka"
    assert "shh" not in repr(provider)


def test_extra_librdkafka_keys_win(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = from_env(monkeypatch, bootstrap_servers=BOOT).librdkafka(**{"client.id": "x", "acks": "all"})
    assert conf["client.id"] == "x" and conf["acks"] == "all"


def test_missing_bootstrap_names_the_key() -> None:
    with pytest.raises(RuntimeError, match="KAFKA_BOOTSTRAP_SERVERS"):
        KafkaSettings().librdkafka()


@pytest.mark.parametrize(("env", "key"), [
    ({"security_protocol": "SASL_SSL"}, "KAFKA_SASL_MECHANISM"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "u"},
     "KAFKA_SASL_PASSWORD"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"}, "KAFKA_SASL_USERNAME"),
    ({"sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": "p"}, "KAFKA_SECURITY_PROTOCOL"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER"},
     "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER",
      "sasl_oauthbearer_token_endpoint_url": "https://idp/token", "sasl_oauthbearer_client_id": "c"},
     "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET"),
    ({"ssl_ca_location": "/ca.crt"}, "KAFKA_SSL_CA_LOCATION"),
    ({"security_protocol": "SSL", "ssl_certificate_location": "/c.crt"}, "KAFKA_SSL_KEY_LOCATION"),
    ({"security_protocol": "SSL", "ssl_key_location": "/c.key"}, "KAFKA_SSL_CERTIFICATE_LOCATION"),
    ({"security_protocol": "TLS"}, "security_protocol"),
    ({"sasl_mechanism": "GSSAPI"}, "sasl_mechanism"),
    ({"compression_type": "brotli"}, "compression_type"),
])
def test_invalid_combinations_name_the_env_key(
    env: dict[str, str], key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValidationError, match=key):
        from_env(monkeypatch, bootstrap_servers=BOOT, **env)


def test_unknown_kafka_env_is_rejected_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    # A typo such as KAFKA_SASL_PASWORD must not silently leave the password unset.
    with pytest.raises(ValidationError):
        KafkaSettings(sasl_pasword="x")  # type: ignore[call-arg]


# --- the client-credentials token provider ---------------------------------------------------


class FakeIdp:
    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self.status = 200
        self.body: dict[str, object] = {"access_token": "tok-1", "token_type": "Bearer", "expires_in": 300}

    async def handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        auth = request.headers.get("Authorization", "")
        user, _, password = base64.b64decode(auth.removeprefix("Basic ")).decode().partition(":")
        fields = {k: str(v) for k, v in form.items()}
        self.requests.append({"user": unquote_plus(user), "password": unquote_plus(password), **fields})
        await asyncio.sleep(0.01)  # let concurrent callers pile up
        if self.status != 200:
            return web.json_response({"error": "invalid_client"}, status=self.status)
        return web.json_response(self.body)


@pytest.fixture
async def idp() -> Iterator[tuple[FakeIdp, str]]:
    fake = FakeIdp()
    app = web.Application()
    app.router.add_post("/token", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield fake, f"http://127.0.0.1:{port}/token"
    await runner.cleanup()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_token_is_fetched_with_client_credentials_and_cached(idp: tuple[FakeIdp, str]) -> None:
    fake, url = idp
    clock = Clock()
    provider = ClientCredentialsTokenProvider(url, "clinstream", "s:h h", scope="kafka", clock=clock)
    tokens = await asyncio.gather(*(provider.token() for _ in range(5)))
    assert tokens == ["tok-1"] * 5
    assert fake.requests == [
        {"user": "clinstream", "password": "s:h h", "grant_type": "client_credentials", "scope": "kafka"}
    ]
    clock.now += 200
    assert await provider.token() == "tok-1"
    assert len(fake.requests) == 1
    # Refreshed before expiry (300 s minus the margin), not after.
    fake.body = {"access_token": "tok-2", "expires_in": 300}
    clock.now += 75
    assert await provider.token() == "tok-2"
    assert len(fake.requests) == 2


async def test_token_endpoint_refusal_is_a_clear_error(idp: tuple[FakeIdp, str]) -> None:
    fake, url = idp
    fake.status = 401
    provider = ClientCredentialsTokenProvider(url, "clinstream", "wrong")
    with pytest.raises(TokenError, match="answered 401"):
        await provider.token()


async def test_response_without_token_is_rejected(idp: tuple[FakeIdp, str]) -> None:
    fake, url = idp
    fake.body = {"token_type": "Bearer"}
    with pytest.raises(TokenError, match="no access_token"):
        await ClientCredentialsTokenProvider(url, "c", "s").token()


async def test_unreachable_endpoint() -> None:
    provider = ClientCredentialsTokenProvider("http://127.0.0.1:9/token", "c", "s", timeout_s=2)
    with pytest.raises(TokenError, match="unreachable"):
        await provider.token()


def test_every_producer_config_is_idempotent_and_compressed_as_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = from_env(monkeypatch, bootstrap_servers=BOOT, compression_type="lz4", security_protocol="SASL_SSL",
                        sasl_mechanism="PLAIN", sasl_username="u", sasl_password="p")
    conf = settings.librdkafka_producer(**{"linger.ms": 5})
    assert conf["enable.idempotence"] is True and conf["acks"] == "all"
    assert conf["compression.type"] == "lz4" and conf["linger.ms"] == 5
    assert conf["sasl.username"] == "u" and conf["security.protocol"] == "sasl_ssl"  # the connection settings too
    assert "compression.type" not in settings.librdkafka()  # consumers and admin clients: producer-only key
