"""TLS on the gateway (vLLM's ``--ssl-keyfile --ssl-certfile``, and with ``--ssl-ca-certs
--ssl-cert-reqs 2`` client certificates): HTTPS and the public gRPC API over TLS with a
certificate made here by openssl, in front of the stack's workers; a client in the clear, or
without its certificate where one is required, gets nothing."""
from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Iterator

import grpc
import httpx
import pytest

from grove.v1 import api_pb2 as pb
from grove.v1 import api_pb2_grpc as pb_grpc
from launcher.stack import Stack
from tests.pipeline.gateway_process import Gateway

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test's certificates")


def _trusting(cert: Path, client: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """A client's TLS context that trusts ``cert`` (and shows ``client``'s certificate, if given)."""
    ctx = ssl.create_default_context(cafile=str(cert))
    if client is not None:
        ctx.load_cert_chain(str(client[1]), str(client[0]))
    return ctx


def _certificate(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return key, cert


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("tls")
    return {name: _certificate(folder, name) for name in ("server", "client")}


@pytest.fixture(scope="module")
def gateway(stack: Stack, certs: dict[str, tuple[Path, Path]],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    key, cert = certs["server"]
    gw = Gateway(stack, tmp_path_factory.mktemp("tls-gateway"), "--ssl-keyfile", str(key), "--ssl-certfile", str(cert))
    yield gw
    gw.stop()


def test_https_and_grpc_over_tls(gateway: Gateway, certs: dict[str, tuple[Path, Path]]) -> None:
    _, cert = certs["server"]
    url = gateway.http_url.replace("http://", "https://")
    r = httpx.post(url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 3, "temperature": 0},
                   verify=_trusting(cert), timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    with pytest.raises(httpx.HTTPError):  # in the clear: no answer
        httpx.get(gateway.http_url + "/health", timeout=10)
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(gateway.grpc_address, credentials) as ch:
        resp = pb_grpc.GroveStub(ch).Generate(pb.GenerateRequest(prompt="Hi", sampling=pb.SamplingParams(
            max_tokens=3, temperature=0)), timeout=60)
        assert len(resp.token_ids) == 3
    with grpc.insecure_channel(gateway.grpc_address) as ch, pytest.raises(grpc.RpcError) as e:
        pb_grpc.GroveStub(ch).ListModels(pb.ListModelsRequest(), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_certificates_when_required(stack: Stack, certs: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    (key, cert), (client_key, client_cert) = certs["server"], certs["client"]
    gw = Gateway(stack, tmp_path, "--ssl-keyfile", str(key), "--ssl-certfile", str(cert),
                 "--ssl-ca-certs", str(client_cert), "--ssl-cert-reqs", "2")
    try:
        url = gw.http_url.replace("http://", "https://") + "/v1/models"
        assert httpx.get(url, verify=_trusting(cert, (client_key, client_cert)), timeout=10).status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(url, verify=_trusting(cert), timeout=10)
        mutual = grpc.ssl_channel_credentials(cert.read_bytes(), client_key.read_bytes(), client_cert.read_bytes())
        with grpc.secure_channel(gw.grpc_address, mutual) as ch:
            assert pb_grpc.GroveStub(ch).ListModels(pb.ListModelsRequest(), timeout=10).models
        with grpc.secure_channel(gw.grpc_address, grpc.ssl_channel_credentials(cert.read_bytes())) as ch, \
                pytest.raises(grpc.RpcError):
            pb_grpc.GroveStub(ch).ListModels(pb.ListModelsRequest(), timeout=10)
    finally:
        gw.stop()
