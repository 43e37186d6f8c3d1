"""Principals for the cross-principal tests: a state dir with an admin, two users and a
viewer (their tokens made by the store, as `bilevel token create` makes them), runs of
each seeded in the store with events, trial files, a task copy and lessons, and a
client per principal whose every call carries its token.

The runs are seeded, not run: what is checked is who may reach them over a real
server's socket, and the server serves seeded runs exactly as finished ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from controller.api.gen.bilevel.v1 import principals_pb2_grpc, runs_pb2_grpc, sandbox_pb2_grpc
from controller.principals import Role
from controller.research.settings import RunSettings, TaskSettings
from controller.store.artifacts import ArtifactStore
from controller.store.memory import Lesson, MemoryStore
from controller.store.principals import PrincipalStore, token_digest
from controller.store.records import EventKind, RunState, TrialFinish, TrialStatus
from controller.store.runs import RunStore
from tests.test_api_harness import ServerThread, serving

NO_DOCKER = "unix:///nonexistent/docker.sock"
STORE = "bilevel.sqlite3"
ROLES = {"root": Role.ADMIN, "alice": Role.USER, "bob": Role.USER, "vera": Role.VIEWER}
SECRET = b"AWS_SECRET=alice-only-0123456789"
EVENTS = 6  # of a seeded finished run: started, proposed, started, finished, best, end
# Each principal's runs: one finished (with trial files and a task copy), one running,
# one paused. Ids say whose they are, for the reader; the server never relies on it.
RUNS = {name: {state: f"run-{name[:4]:x<4}{state[:4]}00" for state in
               ("done", "live", "paused")} for name in ROLES}


def make_principals(state_dir: Path, roles: dict[str, Role] | None = None) -> dict[str, str]:
    """The principals (name -> token), stored hashed in the state dir's store."""
    store = PrincipalStore(state_dir / STORE)
    try:
        return {name: store.create(name, role) for name, role in (roles or ROLES).items()}
    finally:
        store.close()


def add_principal(state_dir: Path, name: str, role: Role, token: str) -> None:
    """A principal with a token the test chose (the store's own create draws one)."""
    store = PrincipalStore(state_dir / STORE)
    try:
        store._db.execute("INSERT INTO principals (name, role, token_sha256, created_at) "
                          "VALUES (?, ?, ?, 0)", (name, role.value, token_digest(token)))
    finally:
        store.close()


def seed_runs(state_dir: Path, owners: tuple[str, ...] = tuple(ROLES)) -> None:
    """For each owner: RUNS[owner]'s finished, running and paused runs, the finished one
    with 6 events (EVENTS), trial 0's train.py and log, results.tsv, a task copy holding SECRET,
    and one lesson."""
    store = RunStore(state_dir / STORE)
    artifacts = ArtifactStore(state_dir / "runs")
    settings = RunSettings(task=TaskSettings(preset="surrogate")).to_dict()
    try:
        for owner in owners:
            ids = RUNS[owner]
            for run_id in ids.values():
                store.create_run(run_id, settings, owner)
                store.append_event(run_id, EventKind.RUN_STARTED,
                                   {"resumed": False, "next_trial": 0})
            done = ids["done"]
            store.begin_trial(done, 0, "baseline", {})
            store.finish_trial(done, TrialFinish(
                index=0, status=TrialStatus.KEEP, val_bpb=1.5, memory_gb=0.1, metrics={},
                job_status="ok", exception=None, seconds=1.0, new_best=True), 1.0)
            summary = f"{owner}'s summary"
            store.finish_run(done, RunState.SUCCEEDED, "trial budget of 0 spent", summary,
                             {"state": "succeeded", "reason": "trial budget of 0 spent",
                              "baseline_val_bpb": 1.5, "best_val_bpb": 1.5,
                              "improved": False, "summary": summary})
            artifacts.write_trial(done, 0, "train.py", f"# {owner}'s train.py\n".encode())
            artifacts.write_trial(done, 0, "log", f"{owner}'s log\nval_bpb: 1.5\n".encode())
            artifacts.write_results(done, "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n")
            secret = state_dir / "runs" / done / "task" / "secret" / "credentials.txt"
            secret.parent.mkdir(parents=True)
            secret.write_bytes(SECRET + owner.encode())
            store.pause_run(ids["paused"], "the LLM failed for good")
            MemoryStore(store).add([Lesson(task="surrogate", run_id=done, kind="helped",
                                           text=f"{owner}: raising lr helped")], owner)
    finally:
        store.close()


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Adds `authorization: Bearer <token>` to every call."""

    def __init__(self, token: str) -> None:
        self.token = token

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), ("authorization", f"Bearer {self.token}")]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any,
                              request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any,
                               request: Any) -> Any:
        return continuation(self._details(details), request)


class Caller:
    """One principal's stubs over its own channel; every call carries its token."""

    def __init__(self, address: str, token: str | None,
                 credentials: grpc.ChannelCredentials | None = None,
                 options: tuple[tuple[str, Any], ...] = ()) -> None:
        channel = grpc.secure_channel(address, credentials, options) if credentials \
            else grpc.insecure_channel(address, options)
        self.closer = channel
        if token is not None:
            channel = grpc.intercept_channel(channel, _Bearer(token))
        self.runs = runs_pb2_grpc.RunServiceStub(channel)  # type: ignore[no-untyped-call]
        self.memory = runs_pb2_grpc.MemoryServiceStub(channel)  # type: ignore[no-untyped-call]
        self.sandbox = sandbox_pb2_grpc.SandboxServiceStub(  # type: ignore[no-untyped-call]
            channel)
        self.principals = principals_pb2_grpc.PrincipalServiceStub(  # type: ignore[no-untyped-call]
            channel)

    def close(self) -> None:
        self.closer.close()


@contextmanager
def cluster(state_dir: Path, factory: Any = None, image: str | None = None,
            **overrides: Any) -> Iterator[tuple[ServerThread, dict[str, Caller]]]:
    """A controller on loopback TCP over `state_dir` (with no Docker engine unless
    `image` is given), whose store already holds the principals, and a Caller per
    principal (by name)."""
    tokens = json.loads((state_dir / "tokens.json").read_text())
    kwargs: dict[str, Any] = {"docker_url": None if image else NO_DOCKER,
                              "listen": "127.0.0.1:0", **overrides}
    if factory is not None:
        kwargs["factory"] = factory
    with serving(state_dir, image, **kwargs) as server:
        callers = {name: Caller(server.address, token) for name, token in tokens.items()}
        try:
            yield server, callers
        finally:
            for caller in callers.values():
                caller.close()


def prepare(state_dir: Path, runs: bool = True) -> dict[str, str]:
    """Principals and (unless `runs` is False) seeded runs in `state_dir`; the tokens
    are kept in tokens.json for `cluster` (outside the store, which keeps only their
    hashes). A server with a Docker engine resumes the seeded running runs, whose
    trials then run beside the test's own jobs."""
    tokens = make_principals(state_dir)
    if runs:
        seed_runs(state_dir)
    (state_dir / "tokens.json").write_text(json.dumps(tokens))
    return tokens


def code_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    """The status code and message of a call that fails; AssertionError if it succeeds."""
    try:
        result = call()
        if hasattr(result, "__next__"):  # a stream: the error comes when it is read
            list(result)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    raise AssertionError("the call succeeded")


def resource_of(error: grpc.RpcError) -> error_details_pb2.ResourceInfo | None:
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
            info = error_details_pb2.ResourceInfo()
            detail.Unpack(info)
            return info
    return None
