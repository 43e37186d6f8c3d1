"""Who may call: bearer tokens, TLS and mutual TLS, and no TCP at all without a token."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.api.gen.bilevel.v1 import runs_pb2_grpc
from controller.config import ConfigError, ServerConfig, TlsConfig
from tests.test_api_harness import ServerThread, Stubs, make_config, serving

TOKEN = "t0ken-for-tests-0123456789abcdef"
NO_DOCKER = "unix:///nonexistent/docker.sock"


def test_deny_request_without_token(tmp_path: Path) -> None:
    with serving(tmp_path, None, docker_url=NO_DOCKER, tokens=(TOKEN,)) as server, \
            pytest.raises(grpc.RpcError) as info:
        Stubs(server.address).runs.ListRuns(rpb.ListRunsRequest())
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_deny_request_with_wrong_token(tmp_path: Path) -> None:
    with serving(tmp_path, None, docker_url=NO_DOCKER, tokens=(TOKEN,)) as server:
        stubs = Stubs(server.address, token=TOKEN[:-1] + "X")
        with pytest.raises(grpc.RpcError) as info:
            stubs.runs.ListRuns(rpb.ListRunsRequest(), metadata=stubs.metadata)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:  # streaming methods too
            list(stubs.runs.WatchRun(rpb.WatchRunRequest(run_id="run-x"),
                                     metadata=stubs.metadata))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_allow_request_with_valid_token(tmp_path: Path) -> None:
    with serving(tmp_path, None, docker_url=NO_DOCKER, tokens=("another-token-of-16+", TOKEN)
                 ) as server:
        stubs = Stubs(server.address, token=TOKEN)
        assert stubs.runs.ListRuns(rpb.ListRunsRequest(), metadata=stubs.metadata).runs == []


def test_allow_health_check_without_token(tmp_path: Path) -> None:
    with serving(tmp_path, None, docker_url=NO_DOCKER, tokens=(TOKEN,)) as server:
        response = Stubs(server.address).health.Check(health_pb2.HealthCheckRequest())
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_deny_tcp_without_a_token_loopback_included(tmp_path: Path) -> None:
    """Every user of a host reaches its loopback ports: without a token a server serves
    only its private Unix socket, and asked for TCP it refuses to start, naming the fix."""
    assert ServerConfig().tcp_address() is None
    for listen in ("0.0.0.0:7000", "127.0.0.1:7000", "[::1]:7000", "localhost:0"):
        with pytest.raises(ConfigError, match=r"serves TCP, which needs authentication: "
                                              r"create a principal \(`bilevel token create"):
            ServerConfig(listen=listen).tcp_address()
    assert ServerConfig(listen="0.0.0.0:7000", tokens=(TOKEN,)).tcp_address() == "0.0.0.0:7000"
    with pytest.raises(ConfigError, match="needs authentication"):
        ServerThread(make_config(tmp_path, None, docker_url=NO_DOCKER, listen="127.0.0.1:0"))


def test_deny_short_tokens() -> None:
    with pytest.raises(ConfigError, match="at least 16"):
        ServerConfig(tokens=("short",)).validate()


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=test-ca", "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                      ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout",
                 str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"),
                 "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2", "-extfile",
                 str(d / f"{name}.ext"), "-out", str(d / f"{name}.pem"))
    return d


def _tls_health(address: str, pki: Path, client_cert: bool) -> int:
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=(pki / "client.key").read_bytes() if client_cert else None,
        certificate_chain=(pki / "client.pem").read_bytes() if client_cert else None)
    channel = grpc.secure_channel(address, creds)
    response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                         timeout=10)
    channel.close()
    return int(response.status)


def test_allow_tls_client_that_trusts_the_server_ca(tmp_path: Path, pki: Path) -> None:
    tls = TlsConfig(pki / "server.pem", pki / "server.key")
    with serving(tmp_path, None, docker_url=NO_DOCKER, tls=tls, tokens=(TOKEN,)) as server:
        assert _tls_health(server.address, pki, client_cert=False) == 1
        with pytest.raises(grpc.RpcError):  # plaintext to a TLS port fails
            health_pb2_grpc.HealthStub(grpc.insecure_channel(server.address)).Check(
                health_pb2.HealthCheckRequest(), timeout=5)


def test_deny_mtls_client_without_certificate(tmp_path: Path, pki: Path) -> None:
    tls = TlsConfig(pki / "server.pem", pki / "server.key", client_ca_file=pki / "ca.pem")
    with serving(tmp_path, None, docker_url=NO_DOCKER, tls=tls, tokens=(TOKEN,)) as server:
        assert _tls_health(server.address, pki, client_cert=True) == 1
        with pytest.raises(grpc.RpcError) as info:
            _tls_health(server.address, pki, client_cert=False)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_token_and_tls_together(tmp_path: Path, pki: Path) -> None:
    tls = TlsConfig(pki / "server.pem", pki / "server.key")
    with serving(tmp_path, None, docker_url=NO_DOCKER, tls=tls, tokens=(TOKEN,)) as server:
        creds = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes())
        channel = grpc.secure_channel(server.address, creds)
        stub = runs_pb2_grpc.RunServiceStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as info:
            stub.ListRuns(rpb.ListRunsRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = stub.ListRuns(rpb.ListRunsRequest(), timeout=10,
                           metadata=(("authorization", f"Bearer {TOKEN}"),))
        assert ok.runs == []
