"""A real controller on a real socket for the API tests, and the tests of what every
server offers: the standard health service and server reflection."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.api.gen.bilevel.v1 import runs_pb2_grpc, sandbox_pb2_grpc
from controller.api.server import ControllerServer
from controller.config import ServerConfig
from controller.sandbox.backend_config import ExecutorConfig
from controller.sandbox.reaper import LABEL_NAMESPACE


class ServerThread:
    """ControllerServer (or a variant of it: `factory`) on its own event loop in a
    thread; tests use sync stubs."""

    def __init__(self, config: ServerConfig,
                 factory: Callable[[ServerConfig], ControllerServer] = ControllerServer
                 ) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.server: ControllerServer | None = None
        started = threading.Event()
        self.error: BaseException | None = None

        def main() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.server = factory(config)
                self.port = self.loop.run_until_complete(self.server.start())
            except BaseException as exc:
                self.error = exc
                started.set()
                return
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        started.wait(60)
        if self.error is not None:
            raise self.error
        assert self.server is not None
        # TCP where it serves TCP (a token configured), else its private Unix socket.
        self.address: str = (f"127.0.0.1:{self.port}" if self.port
                             else self.server.socket.address)

    def stop(self) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(120)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        if not self.thread.is_alive():
            self.loop.close()  # its selector, self-pipe and default executor's threads


def make_config(state_dir: Path, image: str | None, **overrides: Any) -> ServerConfig:
    """A controller on a free loopback port where it has tokens (TCP needs them), else
    on its private Unix socket only."""
    namespace = overrides.pop("namespace", f"pytest-api-{uuid.uuid4().hex[:8]}")
    executor = ExecutorConfig(image=image, slots=overrides.pop("slots", 2),
                              namespace=namespace,
                              docker_url=overrides.pop("docker_url", None),
                              runtime=overrides.pop("runtime", "runc"))
    listen = "127.0.0.1:0" if overrides.get("tokens") else ""
    return replace(ServerConfig(listen=listen, state_dir=state_dir, executor=executor),
                   **overrides)


@contextmanager
def serving(state_dir: Path, image: str | None,
            factory: Callable[[ServerConfig], ControllerServer] = ControllerServer,
            **overrides: Any) -> Iterator[ServerThread]:
    server = ServerThread(make_config(state_dir, image, **overrides), factory)
    try:
        yield server
    finally:
        server.stop()


class Stubs:
    def __init__(self, address: str, token: str | None = None) -> None:
        self.channel = grpc.insecure_channel(address)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.runs = runs_pb2_grpc.RunServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.sandbox = sandbox_pb2_grpc.SandboxServiceStub(  # type: ignore[no-untyped-call]
            self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)


def field_violations(error: grpc.RpcError) -> dict[str, str]:
    """{field: description} from the BadRequest detail of an INVALID_ARGUMENT error."""
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries no rich status details"
    out = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out.update({v.field: v.description for v in bad.field_violations})
    return out


def wait_for_engine(stubs: Stubs, timeout: float = 60) -> None:
    """Block until the sandbox service reports SERVING (engine reached, runs resumed)."""
    request = health_pb2.HealthCheckRequest(service="bilevel.v1.SandboxService")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stubs.health.Check(request).status == health_pb2.HealthCheckResponse.SERVING:
            return
        time.sleep(0.1)
    raise AssertionError("the sandbox service never became SERVING")


def leftover_containers(client: docker.DockerClient, namespace: str) -> list[str]:
    found = client.containers.list(all=True, filters={"label": f"{LABEL_NAMESPACE}={namespace}"})
    return [c.name for c in found]


def surrogate_run(trials: int, seed: int = 0, **budgets: Any) -> rpb.CreateRunRequest:
    return rpb.CreateRunRequest(task=rpb.TaskSpec(preset="surrogate"),
                                search=rpb.SearchSettings(seed=seed),
                                budgets=rpb.Budgets(max_trials=trials, **budgets))


# Tests of what every server offers.


def test_health_reports_serving_and_sandbox_not_serving_without_docker(tmp_path: Path) -> None:
    with serving(tmp_path, None, docker_url="unix:///nonexistent/docker.sock") as server:
        stubs = Stubs(server.address)
        overall = stubs.health.Check(health_pb2.HealthCheckRequest(service=""))
        assert overall.status == health_pb2.HealthCheckResponse.SERVING
        sandbox = stubs.health.Check(
            health_pb2.HealthCheckRequest(service="bilevel.v1.SandboxService"))
        assert sandbox.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_reflection_lists_the_bilevel_services(tmp_path: Path) -> None:
    with serving(tmp_path, None, docker_url="unix:///nonexistent/docker.sock") as server:
        stub = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(server.address))
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(iter(stub.ServerReflectionInfo(iter([request]))))
        names = {s.name for s in response.list_services_response.service}
        assert {"bilevel.v1.SandboxService", "bilevel.v1.RunService",
                "grpc.health.v1.Health"} <= names


def test_a_second_controller_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    from controller.config import ConfigError

    with serving(tmp_path, None, docker_url="unix:///nonexistent/docker.sock"), \
            pytest.raises(ConfigError, match="in use by another controller"):
        ServerThread(make_config(tmp_path, None, docker_url="unix:///nonexistent/x.sock"))
