"""Idle streams cannot shut out other clients (issue 19, part 5): a real controller on
loopback with two principals (admins: both see the run), a run left RUNNING in its store
(no engine, so nothing finishes it), and one client opening 300 idle WatchRun streams
on it. A client is a principal: its streams count together over every connection."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status

from controller.api.admission import Admission, ByteBudget, StreamBudget
from controller.api.edge import UNARY_RPCS, EdgeInterceptor
from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.api.server import EXECUTE, ControllerServer
from controller.principals import Role
from controller.research.settings import RunSettings, TaskSettings
from controller.store.records import EventKind
from controller.store.runs import RunStore
from tests.principals_harness import add_principal
from tests.test_api_harness import Stubs, serving

TOKEN_A = "stream-client-a-0123456789abcdef"
TOKEN_B = "stream-client-b-0123456789abcdef"
NO_DOCKER = "unix:///nonexistent/docker.sock"
RUN = "run-idle000000"
STREAMS, PER_CLIENT = 44, 40  # grpc's cap is then STREAMS + UNARY_RPCS = 300
ATTACK = 300


def running_run(state_dir: Path) -> None:
    """A run RUNNING in the store with one event: WatchRun sends it, then waits; and
    principals "a" and "b" with TOKEN_A and TOKEN_B."""
    add_principal(state_dir, "a", Role.ADMIN, TOKEN_A)
    add_principal(state_dir, "b", Role.ADMIN, TOKEN_B)
    store = RunStore(state_dir / "bilevel.sqlite3")
    settings = RunSettings(task=TaskSettings(preset="surrogate"))
    store.create_run(RUN, settings.to_dict())
    store.append_event(RUN, EventKind.RUN_STARTED, {"resumed": False, "next_trial": 0})
    store.close()


class Client:
    """One token's calls over several connections (each takes 100 streams at most)."""

    def __init__(self, address: str, token: str, connections: int = 4) -> None:
        self.channels = [grpc.insecure_channel(address, options=[
            ("grpc.use_local_subchannel_pool", 1)]) for _ in range(connections)]
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.open: list[Any] = []  # the calls admitted, each holding a stream

    def watch(self) -> grpc.RpcError | None:
        """Open one WatchRun and read its first event; the error if it was refused."""
        channel = self.channels[len(self.open) % len(self.channels)]
        call = channel.unary_stream("/bilevel.v1.RunService/WatchRun")(
            rpb.WatchRunRequest(run_id=RUN).SerializeToString(), metadata=self.metadata,
            timeout=120)
        try:
            next(call)
        except grpc.RpcError as exc:
            return exc
        self.open.append(call)
        return None

    def close(self) -> None:
        for call in self.open:
            call.cancel()
        for channel in self.channels:
            channel.close()


@contextlib.contextmanager
def clients(address: str) -> Iterator[tuple[Client, Client]]:
    a, b = Client(address, TOKEN_A), Client(address, TOKEN_B)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def quota_subject(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None
    quota = error_details_pb2.QuotaFailure()
    assert status.details[0].Unpack(quota)
    return str(quota.violations[0].subject)


def unary_calls(address: str) -> list[grpc.StatusCode]:
    """Another client's ListRuns (20 at once), GetRun and health Check."""
    stubs = Stubs(address, TOKEN_B)

    def call(i: int) -> grpc.StatusCode:
        try:
            if i == 0:
                stubs.health.Check(health_pb2.HealthCheckRequest(), timeout=60)
            elif i == 1:
                stubs.runs.GetRun(rpb.GetRunRequest(run_id=RUN), metadata=stubs.metadata,
                                  timeout=60)
            else:
                stubs.runs.ListRuns(rpb.ListRunsRequest(), metadata=stubs.metadata,
                                    timeout=60)
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    with ThreadPoolExecutor(22) as pool:
        return list(pool.map(call, range(22)))


def test_deny_idle_streams_of_one_client_shut_out_the_others(tmp_path: Path) -> None:
    running_run(tmp_path)
    with serving(tmp_path, None, docker_url=NO_DOCKER, listen="127.0.0.1:0",
                 max_streams=STREAMS, max_streams_per_client=PER_CLIENT) as server, \
            clients(server.address) as (a, b):
        refused = [e for e in (a.watch() for _ in range(ATTACK)) if e is not None]
        assert len(a.open) == PER_CLIENT and len(refused) == ATTACK - PER_CLIENT
        assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert quota_subject(refused[0]) == "server.max_streams_per_client"
        assert f"= {PER_CLIENT}" in (refused[0].details() or "")
        # The other client gets what is left of the budget, then a refusal naming it.
        assert [b.watch() for _ in range(STREAMS - PER_CLIENT)] == [None] * 4
        over = b.watch()
        assert over is not None and over.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert quota_subject(over) == "server.max_streams"
        assert f"all {STREAMS} streams" in (over.details() or "")
        # Unary calls are served beside every stream the budget allows.
        assert unary_calls(server.address) == [grpc.StatusCode.OK] * 22
        # A closed stream gives its place back (once the server has seen it close).
        a.open.pop().cancel()
        deadline = time.monotonic() + 30
        while (again := b.watch()) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert again is None


class Unbudgeted(ControllerServer):
    """The controller with the stream budget weakened to nothing; grpc's own cap on
    concurrent calls stays what the configured budget gives it."""

    def edge(self, admission: Admission) -> EdgeInterceptor:
        c = self.config
        return EdgeInterceptor(self.auth, StreamBudget(10**6, 10**6),
                               ByteBudget(c.max_request_bytes_in_flight), {EXECUTE: admission})


def test_sensitivity_without_the_stream_budget_idle_streams_shut_out_unary_calls(
        tmp_path: Path) -> None:
    running_run(tmp_path)
    assert STREAMS + UNARY_RPCS == ATTACK
    with serving(tmp_path, None, factory=Unbudgeted, docker_url=NO_DOCKER,
                 listen="127.0.0.1:0", max_streams=STREAMS,
                 max_streams_per_client=PER_CLIENT) as server, \
            clients(server.address) as (a, _):
        assert [a.watch() for _ in range(ATTACK)] == [None] * ATTACK
        codes = unary_calls(server.address)
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == len(codes)


def test_streams_of_tokenless_calls_are_bounded_as_one_clients(tmp_path: Path) -> None:
    """A server without tokens serves its private socket only, where a call without a
    token is its owner (LOCAL): one client, whose health Watch streams count as well."""
    with serving(tmp_path, None, docker_url=NO_DOCKER, max_streams=8,
                 max_streams_per_client=3) as server:
        channel = grpc.insecure_channel(server.address)
        watch = channel.unary_stream("/grpc.health.v1.Health/Watch")
        body = health_pb2.HealthCheckRequest().SerializeToString()
        calls = [watch(body, timeout=60) for _ in range(4)]
        codes = []
        for call in calls:
            try:
                next(call)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
                assert quota_subject(exc) == "server.max_streams_per_client"
        for call in calls:
            call.cancel()
        channel.close()
    assert codes.count(grpc.StatusCode.OK) == 3
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 1
