"""MLLP (and FHIR REST) over TLS with a throwaway PKI made by the openssl CLI.

Proves the listener's existing tls_cert/tls_key/tls_client_ca options: TLS works
end to end (commit-then-ACK over TLS), an untrusted server is refused by the
client, and with a client CA configured a client without a certificate is refused.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

from connectors.sources.fhir_http import FhirHttpOptions, FhirHttpSource
from connectors.sources.mllp.client import MllpClient, MllpClientError
from connectors.sources.mllp.listener import DLQ_INGEST, MllpListener, MllpOptions
from schemas.hl7v2.ack import ack_code_of
from tests.support.topics import create_topics, read_all
from topology.settings import KafkaSettings

OPENSSL = shutil.which("openssl") or "openssl"  # the machine image has it; a missing CLI fails loudly


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: trusting only it must fail


def _run(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True)


def _ca(d: Path, name: str) -> None:
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
         "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)


def _leaf(d: Path, name: str, ca: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext)
    _run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
         "-out", f"{name}.csr", cwd=d)
    _run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
         "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext", cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "other")
    _leaf(d, "server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _leaf(d, "client", "ca", "extendedKeyUsage=clientAuth\n")
    return Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key", d / "other.pem")


def client_ctx(ca: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def adt(i: int) -> bytes:
    return (f"MSH|^~\\&|ADT|HOSP|CLIN|HOSP|20240101120000||ADT^A01^ADT_A01|TLS{i:04d}|P|2.5\r"
            f"PID|1||MRN{i:04d}^^^HOSP^MR||DOE^JANE\r").encode()


async def _listener(kafka_bootstrap: str, unique_name, pki: Pki, client_ca: bool) -> MllpListener:
    topic = unique_name("raw.hl7v2.tls")
    create_topics(kafka_bootstrap, [topic, DLQ_INGEST])
    opts = MllpOptions(port=0, tls_cert=str(pki.server_cert), tls_key=str(pki.server_key),
                       tls_client_ca=str(pki.ca) if client_ca else None)
    lst = MllpListener("tls-feed", topic, opts, KafkaSettings(bootstrap_servers=kafka_bootstrap))
    await lst.start()
    return lst


async def test_mllp_over_tls_acks_after_commit(kafka_bootstrap: str, unique_name, pki: Pki):
    lst = await _listener(kafka_bootstrap, unique_name, pki, client_ca=False)
    try:
        async with MllpClient("127.0.0.1", lst.port, ssl_context=client_ctx(pki.ca), timeout_s=10) as client:
            acks = [ack_code_of(await client.send(adt(i))) for i in range(3)]
        assert acks == [("AA", f"TLS{i:04d}") for i in range(3)]
        assert sorted(m.value() for m in read_all(kafka_bootstrap, lst.topic, expect=3)) == [adt(i) for i in range(3)]
        # a client that does not trust the server's CA refuses the connection
        with pytest.raises(ssl.SSLCertVerificationError):
            await MllpClient("127.0.0.1", lst.port, ssl_context=client_ctx(pki.other_ca), timeout_s=10).connect()
        # a plaintext sender gets no ACK: the listener only speaks TLS
        with pytest.raises((MllpClientError, ConnectionError, TimeoutError)):
            async with MllpClient("127.0.0.1", lst.port, timeout_s=3) as plain:
                await plain.send(adt(9))
    finally:
        await lst.stop()
    assert len(read_all(kafka_bootstrap, lst.topic)) == 3


async def test_mllp_client_certificate_required(kafka_bootstrap: str, unique_name, pki: Pki):
    lst = await _listener(kafka_bootstrap, unique_name, pki, client_ca=True)
    try:
        # without a certificate: the handshake is refused (TLS 1.3 reports it on the first read)
        with pytest.raises((ssl.SSLError, MllpClientError, ConnectionError)):
            async with MllpClient("127.0.0.1", lst.port, ssl_context=client_ctx(pki.ca), timeout_s=5) as client:
                await client.send(adt(100))
        cert = (pki.client_cert, pki.client_key)
        async with MllpClient("127.0.0.1", lst.port, ssl_context=client_ctx(pki.ca, cert), timeout_s=10) as client:
            assert ack_code_of(await client.send(adt(101))) == ("AA", "TLS0101")
    finally:
        await lst.stop()
    assert [m.value() for m in read_all(kafka_bootstrap, lst.topic, expect=1)] == [adt(101)]


async def test_fhir_http_over_tls_with_client_certificates(kafka_bootstrap: str, unique_name, pki: Pki):
    name = unique_name("fhtls")
    topic = f"raw.fhir.{name}"
    create_topics(kafka_bootstrap, [topic, DLQ_INGEST])
    opts = FhirHttpOptions(port=0, tls_cert=str(pki.server_cert), tls_key=str(pki.server_key),
                           tls_client_ca=str(pki.ca))
    src = FhirHttpSource(name, topic, opts, KafkaSettings(bootstrap_servers=kafka_bootstrap))
    await src.start()
    body = orjson.dumps({"resourceType": "Patient", "id": "tls"})
    url = f"https://127.0.0.1:{src.port}/fhir/Patient"
    hdrs = {"Content-Type": "application/fhir+json"}
    try:
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientError):
                async with http.post(url, data=body, headers=hdrs, ssl=client_ctx(pki.ca)) as r:
                    await r.read()
            cert = (pki.client_cert, pki.client_key)
            async with http.post(url, data=body, headers=hdrs, ssl=client_ctx(pki.ca, cert)) as r:
                assert r.status == 201
    finally:
        await src.stop()
    assert [m.value() for m in read_all(kafka_bootstrap, topic, expect=1)] == [body]
