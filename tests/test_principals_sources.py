"""Principals beside the store's: a principals file the operator keeps (re-read when it
changes, a removed entry refused on its next call) and client certificates mapped to
principals over mutual TLS (only a verified certificate's subject counts)."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from controller.api.gen.bilevel.v1 import principals_pb2 as ppb
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.config import AuthConfig, ConfigError, ServerConfig, TlsConfig
from controller.store.principals import new_token, token_digest
from tests.principals_harness import NO_DOCKER, RUNS, Caller, code_of, prepare
from tests.test_api_auth import _openssl
from tests.test_api_harness import serving

LIST = rpb.ListRunsRequest()


def _write(path: Path, entries: dict[str, tuple[str, str]]) -> None:
    """The principals file, replaced atomically (a new inode, as an editor saves)."""
    text = "".join(f'[principals.{name}]\nrole = "{role}"\ntoken_sha256 = "{digest}"\n'
                   for name, (role, digest) in entries.items())
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_deny_a_principal_removed_from_the_principals_file_at_its_next_call(
        tmp_path: Path) -> None:
    prepare(tmp_path)
    dave, erin = new_token(), new_token()
    file = tmp_path / "principals.toml"
    _write(file, {"dave": ("admin", token_digest(dave)), "erin": ("viewer", token_digest(erin))})
    with serving(tmp_path, None, docker_url=NO_DOCKER, listen="127.0.0.1:0",
                 auth=AuthConfig(principals_file=file)) as server:
        d, e = Caller(server.address, dave), Caller(server.address, erin)
        me = d.principals.WhoAmI(ppb.WhoAmIRequest())
        assert (me.name, me.role, me.source) == ("dave", ppb.ROLE_ADMIN, "file")
        assert len(d.runs.ListRuns(LIST).runs) == 3 * len(RUNS)  # an admin
        assert list(e.runs.ListRuns(LIST).runs) == []  # a viewer with no runs
        # A file principal is changed in the file, not over the API.
        code, text = code_of(lambda: d.principals.RevokeToken(
            ppb.RevokeTokenRequest(name="erin")))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "principals file" in text
        _write(file, {"dave": ("admin", token_digest(dave))})
        assert code_of(lambda: e.runs.ListRuns(LIST))[0] == grpc.StatusCode.UNAUTHENTICATED
        assert len(d.runs.ListRuns(LIST).runs) == 3 * len(RUNS)
        # A file that no longer parses refuses what it held, rather than serve it stale.
        file.write_text("[principals.dave]\nrole = 'king'\n")
        assert code_of(lambda: d.runs.ListRuns(LIST))[0] == grpc.StatusCode.UNAUTHENTICATED
        d.close()
        e.close()


def test_a_bad_principals_file_stops_the_start(tmp_path: Path) -> None:
    file = tmp_path / "principals.toml"
    file.write_text('[principals.Dave]\nrole = "admin"\ntoken_sha256 = "00"\n')
    with pytest.raises(ConfigError, match=r"principals\.Dave"), \
            serving(tmp_path, None, docker_url=NO_DOCKER, auth=AuthConfig(principals_file=file)):
        pass


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1, and client certificates with the
    subjects alice-laptop and stranger."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=test-ca", "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"),
                      ("alice-laptop", "extendedKeyUsage=clientAuth"),
                      ("stranger", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout",
                 str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"),
                 "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2", "-extfile",
                 str(d / f"{name}.ext"), "-out", str(d / f"{name}.pem"))
    return d


def _cert_caller(address: str, pki: Path, subject: str, token: str | None = None) -> Caller:
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=(pki / f"{subject}.key").read_bytes(),
        certificate_chain=(pki / f"{subject}.pem").read_bytes())
    return Caller(address, token, creds)


def test_allow_a_mapped_client_certificate_as_its_principal(tmp_path: Path, pki: Path) -> None:
    tokens = prepare(tmp_path)
    tls = TlsConfig(pki / "server.pem", pki / "server.key", client_ca_file=pki / "ca.pem")
    with serving(tmp_path, None, docker_url=NO_DOCKER, listen="127.0.0.1:0", tls=tls,
                 auth=AuthConfig(certificates={"alice-laptop": "alice"})) as server:
        laptop = _cert_caller(server.address, pki, "alice-laptop")
        assert laptop.principals.WhoAmI(ppb.WhoAmIRequest()).name == "alice"
        assert sorted(r.id for r in laptop.runs.ListRuns(LIST).runs) == \
            sorted(RUNS["alice"].values())
        code, _ = code_of(lambda: laptop.runs.GetRun(rpb.GetRunRequest(
            run_id=RUNS["bob"]["done"])))
        assert code == grpc.StatusCode.NOT_FOUND
        # An unmapped certificate names nobody; a token beside a certificate wins.
        stranger = _cert_caller(server.address, pki, "stranger")
        assert code_of(lambda: stranger.runs.ListRuns(LIST))[0] == \
            grpc.StatusCode.UNAUTHENTICATED
        as_bob = _cert_caller(server.address, pki, "alice-laptop", tokens["bob"])
        assert as_bob.principals.WhoAmI(ppb.WhoAmIRequest()).name == "bob"
        # Revoking the principal revokes its certificate too.
        root = _cert_caller(server.address, pki, "stranger", tokens["root"])
        root.principals.RevokeToken(ppb.RevokeTokenRequest(name="alice"))
        assert code_of(lambda: laptop.runs.ListRuns(LIST))[0] == \
            grpc.StatusCode.UNAUTHENTICATED
        for caller in (laptop, stranger, as_bob, root):
            caller.close()


def test_sensitivity_without_the_mapping_the_certificate_names_nobody(
        tmp_path: Path, pki: Path) -> None:
    """Twin: the same certificate on a server with no auth.certificates."""
    prepare(tmp_path)
    tls = TlsConfig(pki / "server.pem", pki / "server.key", client_ca_file=pki / "ca.pem")
    with serving(tmp_path, None, docker_url=NO_DOCKER, listen="127.0.0.1:0",
                 tls=tls) as server:
        laptop = _cert_caller(server.address, pki, "alice-laptop")
        assert code_of(lambda: laptop.runs.ListRuns(LIST))[0] == \
            grpc.StatusCode.UNAUTHENTICATED
        laptop.close()


def test_deny_certificate_mapping_without_required_client_certificates(pki: Path) -> None:
    tls = TlsConfig(pki / "server.pem", pki / "server.key")
    config = ServerConfig(tls=tls, auth=AuthConfig(certificates={"alice-laptop": "alice"}))
    with pytest.raises(ConfigError, match="client_ca_file"):
        config.validate()
    with pytest.raises(ConfigError, match="principal name"):
        ServerConfig(tls=TlsConfig(pki / "server.pem", pki / "server.key",
                                   client_ca_file=pki / "ca.pem"),
                     auth=AuthConfig(certificates={"x": "Not A Name"})).validate()


def test_the_auth_and_memory_settings_from_file_and_environment(tmp_path: Path) -> None:
    from controller.config_file import load, read_env, read_file

    principals = tmp_path / "principals.toml"
    principals.write_text("")
    config = tmp_path / "bilevel.toml"
    config.write_text(f'[auth]\nprincipals_file = "{principals}"\n'
                      '[auth.certificates]\n"alice-laptop" = "alice"\n'
                      '[memory]\nshared = true\n')
    values = read_file(config)
    assert values["auth.certificates"].value == {"alice-laptop": "alice"}
    env = read_env({"BILEVEL_AUTH__CERTIFICATES": "a.example=alice, b=bob",
                    "BILEVEL_MEMORY__SHARED": "false"})
    assert env["auth.certificates"].value == {"a.example": "alice", "b": "bob"}
    assert env["memory.shared"].value is False
    loaded = load(None, {"BILEVEL_AUTH__PRINCIPALS_FILE": str(principals),
                         "BILEVEL_MEMORY__SHARED": "true",
                         "BILEVEL_SERVER__STATE_DIR": str(tmp_path)}, {})
    assert loaded.auth.principals_file == principals and loaded.shared_memory is True
    with pytest.raises(ConfigError, match="client_ca_file"):  # certificates need mTLS
        load(config, {"BILEVEL_SERVER__STATE_DIR": str(tmp_path)}, {})
