"""The deny tests must be able to fail: with one hardening setting switched off (here,
in the test only — no request can do this), the same attack succeeds."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from controller.sandbox import executor as executor_module
from controller.sandbox.executor import SandboxExecutor
from controller.sandbox.spec import JobSpec, Limits, Status

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
