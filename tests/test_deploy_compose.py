"""`docker compose up` of the CPU variant on the real engine, driven by the README's
commands: the controller comes up healthy behind TLS and a token, runs an Execute job
and a short surrogate run in sibling sandboxes, then goes down with its store kept on
the volume and comes back with it. Needs docker-compose (apt-get install docker-compose)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.api.gen.bilevel.v1 import runs_pb2_grpc, sandbox_pb2_grpc
from controller.api.gen.bilevel.v1 import sandbox_pb2 as spb
from controller.sandbox.reaper import LABEL_NAMESPACE
from tests.test_api_harness import surrogate_run

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[1]
HEALTHY_TIMEOUT = 240.0


@dataclass
class Stack:
    project: str
    namespace: str
    out: Path
    env: dict[str, str]
    run_id: str = ""  # the run a test made, for the restart test to find

    def compose(self, *args: str, timeout: float = 600) -> str:
        done = subprocess.run(
            ["docker-compose", "--env-file", str(self.out / "compose.env"), *args],
            cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout,
            check=False)
        assert done.returncode == 0, f"docker-compose {' '.join(args)}:\n{done.stderr[-4000:]}"
        return done.stdout

    def container(self) -> str:
        return self.compose("ps", "-q", "controller").strip()

    def wait_healthy(self) -> str:
        """The published address once compose's health check (gRPC health) passes."""
        deadline = time.monotonic() + HEALTHY_TIMEOUT
        status = ""
        while time.monotonic() < deadline:
            cid = self.container()
            if cid:
                state = json.loads(subprocess.run(
                    ["docker", "inspect", "--format", "{{json .State}}", cid],
                    capture_output=True, text=True, check=True).stdout)
                status = (state.get("Health") or {}).get("Status", "")
                if status == "healthy":
                    host_port = self.compose("port", "controller", "50051").strip()
                    return "127.0.0.1:" + host_port.rsplit(":", 1)[1]
            time.sleep(1)
        logs = self.compose("logs", "--tail", "40", "controller")
        raise AssertionError(f"controller not healthy ({status!r}) in {HEALTHY_TIMEOUT} s:\n"
                             f"{logs}")

    def channel(self, address: str) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=(self.out / "secrets" / "tls.crt").read_bytes())
        return grpc.secure_channel(address, creds)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        token = (self.out / "secrets" / "token").read_text().strip()
        return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is not installed: apt-get install docker-compose")
    tag = f"pytest-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    out = REPO / "build" / f"deploy-{tag}"
    env = {**os.environ, "COMPOSE_PROJECT_NAME": f"bilevel-{tag}",
           "BILEVEL_NAMESPACE": f"bilevel-{tag}", "BILEVEL_PUBLISH": "127.0.0.1:"}
    # The README's first step, in its CPU form.
    subprocess.run([sys.executable, str(REPO / "deploy" / "prepare.py"), "--variant", "cpu",
                    "--base", os.environ.get("BILEVEL_BASE", "auto"), "--out", str(out)],
                   check=True, env=env, capture_output=True, timeout=600)
    stack = Stack(f"bilevel-{tag}", f"bilevel-{tag}", out, env)
    try:
        stack.compose("up", "-d", "--build")  # the README's second step
        yield stack
    finally:
        subprocess.run(["docker-compose", "--env-file", str(out / "compose.env"), "down",
                        "-v", "--remove-orphans"], cwd=REPO, env=env, capture_output=True,
                       check=False, timeout=300)
        shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="module")
def address(stack: Stack) -> str:
    return stack.wait_healthy()


def test_health_answers_serving_over_tls_without_a_token(stack: Stack, address: str) -> None:
    with stack.channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "bilevel.v1.SandboxService", "bilevel.v1.RunService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


def test_deny_calls_without_the_token(stack: Stack, address: str) -> None:
    with stack.channel(address) as channel:
        runs = runs_pb2_grpc.RunServiceStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as caught:
            runs.ListRuns(rpb.ListRunsRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_deny_plaintext_connections(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError):
            health.Check(health_pb2.HealthCheckRequest(), timeout=5)


def test_execute_runs_in_a_gvisor_sandbox_by_default(stack: Stack, address: str) -> None:
    """The deployment's runtime floor is runsc: a job asking for nothing gets gVisor,
    no network interface but loopback, and none of the controller's secrets."""
    code = ("import os, platform, socket; print(platform.release()); "
            "print(sorted(n for _, n in socket.if_nameindex())); "
            "print(sorted(k for k in os.environ if 'KEY' in k or 'TOKEN' in k))")
    request = spb.ExecuteRequest(command=["python3", "-c", code])
    with stack.channel(address) as channel:
        sandbox = sandbox_pb2_grpc.SandboxServiceStub(channel)  # type: ignore[no-untyped-call]
        events = list(sandbox.Execute(request, metadata=stack.metadata, timeout=120))
    result = events[-1].finished.result
    assert result.status == spb.JOB_STATUS_OK, result
    release, interfaces, secrets = result.stdout_head.splitlines()[:3]
    assert release == "4.4.0"  # gVisor's kernel
    assert interfaces == "['lo']"
    assert secrets == "[]"


def test_a_short_surrogate_run_completes(stack: Stack, address: str) -> None:
    with stack.channel(address) as channel:
        runs = runs_pb2_grpc.RunServiceStub(channel)  # type: ignore[no-untyped-call]
        run = runs.CreateRun(surrogate_run(trials=3), metadata=stack.metadata, timeout=30)
        deadline = time.monotonic() + 180
        while True:
            got = runs.GetRun(rpb.GetRunRequest(run_id=run.id), metadata=stack.metadata,
                              timeout=10)
            if got.state != rpb.RUN_STATE_RUNNING or time.monotonic() > deadline:
                break
            time.sleep(1)
    assert got.state == rpb.RUN_STATE_SUCCEEDED, got
    assert got.trials_done == 4  # the baseline and three trials
    stack.run_id = run.id


def test_down_keeps_the_store_and_up_brings_it_back(stack: Stack, address: str) -> None:
    run_id = stack.run_id
    assert run_id, "needs test_a_short_surrogate_run_completes to have run"
    stack.compose("down")
    client = docker.from_env()
    assert client.volumes.get(f"{stack.project}_state") is not None
    assert client.containers.list(all=True, filters={
        "label": f"{LABEL_NAMESPACE}={stack.namespace}"}) == []  # no sandbox left behind
    stack.compose("up", "-d")
    again = stack.wait_healthy()
    with stack.channel(again) as channel:
        runs = runs_pb2_grpc.RunServiceStub(channel)  # type: ignore[no-untyped-call]
        got = runs.GetRun(rpb.GetRunRequest(run_id=run_id), metadata=stack.metadata,
                          timeout=10)
    assert got.state == rpb.RUN_STATE_SUCCEEDED
    assert got.trials_done == 4
