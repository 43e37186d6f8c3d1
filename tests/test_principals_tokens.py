"""Tokens of principals on a running server: made and revoked by `bilevel token` on the
state dir (another process) or by an admin over PrincipalService, each taking effect on
the very next call with no restart; stored only hashed; the single shared token of a
deployment is principal "shared"; non-admins manage nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import grpc
import pytest

from controller.api import principals_service
from controller.api.gen.bilevel.v1 import principals_pb2 as ppb
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.api.server import ControllerServer
from controller.config import ServerConfig
from controller.principals import Principal
from controller.store.directory import Directory
from controller.store.runs import RunStore
from tests.principals_harness import RUNS, Caller, cluster, code_of, prepare
from tests.test_api_harness import ServerThread

LEGACY = "legacy-shared-token-0123456789abcdef"
LIST = rpb.ListRunsRequest()


def bilevel(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILEVEL_")}
    return subprocess.run([sys.executable, "-m", "controller.cli", "--log-level", "warning",
                           *args], input=stdin, capture_output=True, text=True, timeout=120,
                          env=env, check=False)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    prepare(tmp_path)
    return tmp_path


@pytest.fixture
def served(state: Path) -> Iterator[tuple[ServerThread, dict[str, Caller]]]:
    with cluster(state) as both:
        yield both


def _refused(caller: Caller) -> bool:
    """Whether the caller's next call is UNAUTHENTICATED."""
    try:
        caller.runs.ListRuns(LIST, timeout=30)
    except grpc.RpcError as exc:
        return bool(exc.code() == grpc.StatusCode.UNAUTHENTICATED)
    return False


def test_deny_a_token_revoked_by_the_cli_on_the_state_dir_at_its_next_call(
        state: Path, served: tuple[ServerThread, dict[str, Caller]]) -> None:
    _, c = served
    assert len(c["bob"].runs.ListRuns(LIST).runs) == 3
    watch = c["bob"].runs.WatchRun(rpb.WatchRunRequest(run_id=RUNS["bob"]["done"]))
    done = bilevel("token", "revoke", "bob", "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    assert _refused(c["bob"])
    code, _ = code_of(lambda: c["bob"].runs.WatchRun(rpb.WatchRunRequest(
        run_id=RUNS["bob"]["done"])))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert len(list(watch)) > 0  # a stream admitted before is not cut short
    assert len(c["alice"].runs.ListRuns(LIST).runs) == 3  # the others are untouched
    # A token made on the state dir works at once, for a principal that owns nothing.
    made = bilevel("token", "create", "carol", "--role", "user", "--state-dir", str(state))
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    carol = Caller(served[0].address, token)
    assert carol.principals.WhoAmI(ppb.WhoAmIRequest()).name == "carol"
    assert list(carol.runs.ListRuns(LIST).runs) == []
    carol.close()
    listed = bilevel("token", "list", "--state-dir", str(state)).stdout
    assert "carol\tuser\tstore" in listed and "bob" not in listed


def test_deny_a_token_revoked_by_an_admin_over_the_api_at_its_next_call(
        served: tuple[ServerThread, dict[str, Caller]]) -> None:
    server, c = served
    made = c["root"].principals.CreateToken(ppb.CreateTokenRequest(name="dave",
                                                                   role=ppb.ROLE_VIEWER))
    assert made.principal.role == ppb.ROLE_VIEWER and len(made.token) == 64
    dave = Caller(server.address, made.token)
    assert dave.principals.WhoAmI(ppb.WhoAmIRequest()).role == ppb.ROLE_VIEWER
    c["root"].principals.RevokeToken(ppb.RevokeTokenRequest(name="alice"))
    assert _refused(c["alice"])
    names = [p.name for p in c["root"].principals.ListPrincipals(
        ppb.ListPrincipalsRequest()).principals]
    assert names == ["bob", "dave", "root", "vera"]
    # What alice owned stays hers: an admin still sees it.
    assert c["root"].runs.GetRun(rpb.GetRunRequest(run_id=RUNS["alice"]["done"])).owner == \
        "alice"
    code, _ = code_of(lambda: c["root"].principals.CreateToken(ppb.CreateTokenRequest(
        name="bob", role=ppb.ROLE_USER)))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    for bad in ("shared", "Bob", ""):
        code, _ = code_of(partial(c["root"].principals.CreateToken,
                                  ppb.CreateTokenRequest(name=bad, role=ppb.ROLE_USER)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, bad
    dave.close()


class CachingDirectory(Directory):
    """A directory that remembers a token once it has resolved it (the flaw)."""

    def __init__(self, inner: Directory) -> None:
        super().__init__(inner.store, inner.file)
        self.seen: dict[str, Principal | None] = {}

    def by_token(self, token: str) -> Principal | None:
        if token not in self.seen:
            self.seen[token] = super().by_token(token)
        return self.seen[token]


class CachingServer(ControllerServer):
    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        self.auth.directory = CachingDirectory(self.principals)


def test_sensitivity_a_token_cache_keeps_a_revoked_token_working(state: Path) -> None:
    """Twin of the revocation tests: with the tokens cached, a revoked one works on."""
    with cluster(state, factory=CachingServer) as (_, c):
        assert len(c["bob"].runs.ListRuns(LIST).runs) == 3
        assert bilevel("token", "revoke", "bob", "--state-dir", str(state)).returncode == 0
        assert len(c["bob"].runs.ListRuns(LIST).runs) == 3


def test_deny_non_admins_manage_principals(
        served: tuple[ServerThread, dict[str, Caller]]) -> None:
    _, c = served
    for name in ("alice", "vera"):
        stub = c[name].principals
        calls = (partial(stub.CreateToken, ppb.CreateTokenRequest(name="mallory",
                                                                  role=ppb.ROLE_ADMIN)),
                 partial(stub.ListPrincipals, ppb.ListPrincipalsRequest()),
                 partial(stub.RevokeToken, ppb.RevokeTokenRequest(name="root")))
        for call in calls:
            assert code_of(call)[0] == grpc.StatusCode.PERMISSION_DENIED
    assert not _refused(c["root"])
    assert "mallory" not in [p.name for p in c["root"].principals.ListPrincipals(
        ppb.ListPrincipalsRequest()).principals]


def test_sensitivity_without_the_admin_check_a_user_lists_every_principal(
        served: tuple[ServerThread, dict[str, Caller]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(principals_service, "require_admin", lambda principal, action: None)
    _, c = served
    listed = c["alice"].principals.ListPrincipals(ppb.ListPrincipalsRequest()).principals
    assert {p.name for p in listed} == set(RUNS)


def test_tokens_are_stored_only_hashed(state: Path) -> None:
    tokens = (state / "tokens.json").read_text()
    raw = b"".join(p.read_bytes() for p in state.glob("bilevel.sqlite3*"))
    for token in json.loads(tokens).values():
        assert token.encode() not in raw


def test_allow_the_legacy_shared_token_as_principal_shared(state: Path) -> None:
    """A deployment's single token keeps working: principal "shared", an admin, which owns
    what was made before principals."""
    store = RunStore(state / "bilevel.sqlite3")
    store.create_run("run-old000000000", {"task": {"preset": "surrogate"}})
    store.close()
    with cluster(state, tokens=(LEGACY,)) as (server, c):
        legacy = Caller(server.address, LEGACY)
        me = legacy.principals.WhoAmI(ppb.WhoAmIRequest())
        assert (me.name, me.role, me.source) == ("shared", ppb.ROLE_ADMIN, "shared")
        assert len(legacy.runs.ListRuns(LIST).runs) == 3 * len(RUNS) + 1
        assert legacy.runs.GetRun(rpb.GetRunRequest(run_id="run-old000000000")).owner == \
            "shared"
        code, _ = code_of(lambda: c["alice"].runs.GetRun(rpb.GetRunRequest(
            run_id="run-old000000000")))
        assert code == grpc.StatusCode.NOT_FOUND
        legacy.close()


def test_the_cli_refuses_a_taken_or_built_in_name_and_hashes_for_a_file(state: Path) -> None:
    taken = bilevel("token", "create", "alice", "--role", "user", "--state-dir", str(state))
    assert taken.returncode == 2 and "exists" in taken.stderr and taken.stdout == ""
    builtin = bilevel("token", "create", "local", "--role", "admin", "--state-dir", str(state))
    assert builtin.returncode == 2 and "built in" in builtin.stderr
    unknown = bilevel("token", "revoke", "nobody", "--state-dir", str(state))
    assert unknown.returncode == 2 and "no principal" in unknown.stderr
    hashed = bilevel("token", "hash", stdin="abc\n")
    assert hashed.stdout.strip() == \
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_a_store_from_before_principals_is_shared_s(tmp_path: Path) -> None:
    """The migration: runs and lessons of a store made before the owner columns existed
    belong to principal "shared" when it is opened."""
    import sqlite3

    from controller.store import db as schema
    from controller.store.memory import MemoryStore

    path = tmp_path / "bilevel.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(schema.RUNS + schema.LESSONS)  # the tables as first released
    db.execute("INSERT INTO runs (id, state, settings_json, created_at, updated_at) "
               "VALUES ('run-old000000000', 'succeeded', '{}', 1, 1)")
    db.execute("INSERT INTO lessons (task, run_id, kind, text, created_at) "
               "VALUES ('t', 'run-old000000000', 'helped', 'old lesson', 1)")
    db.commit()
    db.close()
    store = RunStore(path)
    try:
        assert store.get_run("run-old000000000").owner == "shared"
        assert [lesson.owner for lesson in MemoryStore(store).list()] == ["shared"]
        assert store.list_runs(10, None, owner="alice")[0] == []
    finally:
        store.close()


def test_the_cli_manages_principals_over_the_api_as_an_admin(
        state: Path, served: tuple[ServerThread, dict[str, Caller]]) -> None:
    server, _ = served
    tokens = json.loads((state / "tokens.json").read_text())
    for name in ("root", "alice"):
        (state / f"{name}.token").write_text(tokens[name] + "\n")
    remote = ("--server", server.address, "--token-file")
    made = bilevel("token", "create", "erin", "--role", "viewer", *remote,
                   str(state / "root.token"))
    assert made.returncode == 0, made.stderr
    erin = Caller(server.address, made.stdout.strip())
    assert erin.principals.WhoAmI(ppb.WhoAmIRequest()).role == ppb.ROLE_VIEWER
    erin.close()
    listed = bilevel("token", "list", *remote, str(state / "root.token"))
    assert "erin\tviewer\tstore" in listed.stdout
    denied = bilevel("token", "revoke", "root", *remote, str(state / "alice.token"))
    assert denied.returncode == 2 and "PERMISSION_DENIED" in denied.stderr
