"""The deny tests must be able to fail: with one hardening setting switched off (here,
in the test only — no request can do this), the same attack succeeds."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from controller.sandbox import executor as executor_module
from controller.sandbox import hardening
from controller.sandbox.executor import SandboxExecutor
from controller.sandbox.spec import RUNTIMES, JobResult, JobSpec, Limits, Status
from tests.test_sandbox_deny_runner import (
    DAEMON_FORGERY,
    HIDDEN_DISK_FILL,
    PREWRITTEN_FORGERY,
    json_line,
)

pytestmark = pytest.mark.docker


def weaken(monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> None:
    original = executor_module.container_kwargs  # type: ignore[attr-defined]

    def patched(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {**original(*args, **kwargs), **overrides}

    monkeypatch.setattr(executor_module, "container_kwargs", patched)


def test_setuid_escalates_without_no_new_privileges(setuid_executor: SandboxExecutor,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    weaken(monkeypatch, security_opt=[])
    spec = JobSpec(files={}, command=("/usr/local/bin/suid-id", "-u"),
                   image=setuid_executor.config.allowed_images[0])
    result = setuid_executor.run(spec)
    assert result.stdout.strip() == "0"


def test_listener_reachable_with_a_network(executor: SandboxExecutor,
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
    result = executor.run(JobSpec(files={"main.py": source.encode()},
                                  command=("python3", "main.py")))
    assert result.stdout.strip() == "connected", result
    assert accepted


def test_fork_unbounded_without_pids_limit(executor: SandboxExecutor,
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
    result = executor.run(JobSpec(files={"main.py": source.encode()},
                                  command=("python3", "main.py"),
                                  limits=Limits(pids=64, wall_seconds=60)))
    assert result.status is Status.OK, result
    assert int(result.stdout.strip()) == 150


def legacy_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner's old layout (test-only, set in job.json, which only the executor
    writes): the runner runs as the job's uid, its directory is the job's to write,
    and only the job's process group is killed."""
    original = hardening.runner_job

    def patched(spec: JobSpec) -> dict[str, Any]:
        return {**original(spec), "_test_legacy_layout": True}

    monkeypatch.setattr(executor_module, "runner_job", patched)


def run_source(executor: SandboxExecutor, source: str, runtime: str,
               **limits: Any) -> JobResult:
    return executor.run(JobSpec(files={"main.py": textwrap.dedent(source).encode()},
                                command=("python3", "main.py"), runtime=runtime,
                                limits=Limits(wall_seconds=60, **limits)))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_disk_unbounded_without_the_sized_job_tmpfs(executor: SandboxExecutor,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    runtime: str) -> None:
    weaken(monkeypatch, tmpfs={"/tmp": "rw,noexec,nosuid,nodev,size=16m",
                               "/job": "rw,exec,nosuid,nodev,mode=0755"})
    result = run_source(executor, HIDDEN_DISK_FILL, runtime, disk_bytes=32 << 20)
    assert json_line(result) == {"written": 96 << 20, "error": None}


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("attack", [DAEMON_FORGERY, PREWRITTEN_FORGERY],
                         ids=["daemon", "prewritten"])
def test_result_forged_in_the_old_layout(executor: SandboxExecutor,
                                         monkeypatch: pytest.MonkeyPatch,
                                         runtime: str, attack: str) -> None:
    legacy_runner(monkeypatch)
    result = run_source(executor, attack, runtime)
    assert (result.status, result.exit_code) == (Status.OK, 0), result


def test_runner_stopped_and_killed_by_the_job_in_the_old_layout(
        executor: SandboxExecutor, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under gVisor a job of the runner's uid can freeze PID 1 (it then watches
    nothing) and kill it; that death is reported as a sandbox failure, not `killed`."""
    legacy_runner(monkeypatch)
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
    """, "runsc")
    assert "runner state T" in result.stdout, result
    assert result.status is Status.SANDBOX_ERROR, result


def test_endless_fork_bomb_kills_gvisor_at_the_old_host_task_ceiling(
        executor: SandboxExecutor, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_sandbox_deny import ENDLESS_FORK_BOMB

    monkeypatch.setattr(hardening, "host_pids_limit",
                        lambda spec: spec.limits.pids * 8 + 256)
    result = run_source(executor, ENDLESS_FORK_BOMB, "runsc", pids=64)
    assert result.status is Status.SANDBOX_ERROR, result
