"""The deny tests must be able to fail: with one hardening setting switched off (here,
in the test only — no request can do this), the same attack succeeds."""

from __future__ import annotations

import textwrap
from typing import Any

import docker
import pytest

from controller.sandbox import docker_job, hardening
from controller.sandbox.backend import SandboxBackend
from controller.sandbox.spec import RUNTIMES, JobResult, JobSpec, Limits, Status
from tests.legacy_runner import legacy_runner_image
from tests.test_sandbox_deny_runner import (
    DAEMON_FORGERY,
    HIDDEN_DISK_FILL,
    PREWRITTEN_FORGERY,
    json_line,
)

pytestmark = pytest.mark.docker


def weaken(monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> None:
    original = hardening.container_kwargs

    def patched(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {**original(*args, **kwargs), **overrides}

    monkeypatch.setattr(docker_job, "container_kwargs", patched)


def test_setuid_escalates_without_no_new_privileges(setuid_executor: SandboxBackend,
                                                     setuid_image: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    weaken(monkeypatch, security_opt=[])
    spec = JobSpec(files={}, command=("/usr/local/bin/suid-id", "-u"), image=setuid_image)
    result = setuid_executor.run_job(spec)
    assert result.stdout.strip() == "0"


def test_listener_reachable_with_a_network(executor: SandboxBackend,
                                           monkeypatch: pytest.MonkeyPatch,
                                           listener: tuple[int, list[str]],
                                           bridge_gateway: str) -> None:
    port, accepted = listener
    weaken(monkeypatch, network_mode="bridge", network_disabled=False)
    source = textwrap.dedent(f"""
        import socket
        socket.create_connection(({bridge_gateway!r}, {port}), timeout=5).close()
        print("connected")
    """)
    result = executor.run_job(JobSpec(files={"main.py": source.encode()},
                                  command=("python3", "main.py")))
    assert result.stdout.strip() == "connected", result
    assert accepted


def test_fork_unbounded_without_pids_limit(executor: SandboxBackend,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    weaken(monkeypatch, pids_limit=None)
    source = textwrap.dedent("""
        import os, time
        n = 0
        for _ in range(150):
            if os.fork() == 0:
                time.sleep(20)
                os._exit(0)
            n += 1
        print(n)
    """)
    result = executor.run_job(JobSpec(files={"main.py": source.encode()},
                                  command=("python3", "main.py"),
                                  limits=Limits(pids=64, wall_seconds=60)))
    assert result.status is Status.OK, result
    assert int(result.stdout.strip()) == 150


@pytest.fixture(scope="module")
def legacy_runner(docker_client: docker.DockerClient, sandbox_image: str,
                  default_executor: SandboxBackend) -> str:
    """A test image whose runner has the old layout (tests/legacy_runner.py): the runner
    runs as the job's uid, its directory is the job's to write, and only the job's
    process group is killed. The product image has no such mode."""
    tag = legacy_runner_image(docker_client, sandbox_image)
    default_executor.allow_image(tag)  # `executor` of the tests here
    return tag


def run_source(executor: SandboxBackend, source: str, runtime: str, image: str | None = None,
               **limits: Any) -> JobResult:
    return executor.run_job(JobSpec(files={"main.py": textwrap.dedent(source).encode()},
                                    command=("python3", "main.py"), runtime=runtime,
                                    image=image, limits=Limits(wall_seconds=60, **limits)))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_disk_unbounded_without_the_sized_job_tmpfs(executor: SandboxBackend,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    runtime: str) -> None:
    weaken(monkeypatch, tmpfs={"/tmp": "rw,noexec,nosuid,nodev,size=16m",
                               "/job": "rw,exec,nosuid,nodev,mode=0755"})
    result = run_source(executor, HIDDEN_DISK_FILL, runtime, disk_bytes=32 << 20)
    assert json_line(result) == {"written": 96 << 20, "error": None}


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("attack", [DAEMON_FORGERY, PREWRITTEN_FORGERY],
                         ids=["daemon", "prewritten"])
def test_result_forged_in_the_old_layout(executor: SandboxBackend, legacy_runner: str,
                                         runtime: str, attack: str) -> None:
    result = run_source(executor, attack, runtime, legacy_runner)
    assert (result.status, result.exit_code) == (Status.OK, 0), result


def test_runner_stopped_and_killed_by_the_job_in_the_old_layout(
        executor: SandboxBackend, legacy_runner: str) -> None:
    """Under gVisor a job of the runner's uid can freeze PID 1 (it then watches
    nothing) and kill it; that death is reported as a sandbox failure, not `killed`."""
    result = run_source(executor, """
        import os, signal, time
        os.kill(1, signal.SIGSTOP)
        time.sleep(0.5)
        state = [l for l in open("/proc/1/status") if l.startswith("State:")][0]
        print("runner state", state.split()[1], flush=True)
        os.kill(1, signal.SIGCONT)
        time.sleep(0.5)
        os.kill(1, signal.SIGKILL)
        time.sleep(30)
    """, "runsc", legacy_runner)
    assert "runner state T" in result.stdout, result
    assert result.status is Status.SANDBOX_ERROR, result


def test_endless_fork_bomb_kills_gvisor_at_the_old_host_task_ceiling(
        executor: SandboxBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_sandbox_deny import ENDLESS_FORK_BOMB

    monkeypatch.setattr(hardening, "host_pids_limit",
                        lambda spec: spec.limits.pids * 8 + 256)
    result = run_source(executor, ENDLESS_FORK_BOMB, "runsc", pids=64)
    assert result.status is Status.SANDBOX_ERROR, result
