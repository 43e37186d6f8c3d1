"""Attacks on the trusted runner (PID 1) and on what it reports, under runc and gVisor:
hiding CPU time in orphans, forging the result, signalling the runner, hiding disk use.
"""

from __future__ import annotations

import textwrap

import pytest

from controller.sandbox.executor import SandboxExecutor
from controller.sandbox.spec import JobResult, JobSpec, Limits, Status

pytestmark = [pytest.mark.docker, pytest.mark.parametrize("runtime", ["runc", "runsc"])]


def run_py(executor: SandboxExecutor, source: str, runtime: str, **limits: float) -> JobResult:
    spec = JobSpec(files={"main.py": textwrap.dedent(source).encode()},
                   command=("python3", "main.py"), runtime=runtime,
                   limits=Limits(**{"wall_seconds": 60.0, **limits}))  # type: ignore[arg-type]
    return executor.run(spec)


def test_deny_hiding_cpu_time_in_an_orphan(executor: SandboxExecutor, runtime: str) -> None:
    """CPU burnt by a double-forked orphan counts: the runner reaps it and measures
    every reaped process (getrusage(RUSAGE_CHILDREN))."""
    result = run_py(executor, """
        import os, time
        def burn(seconds):
            while time.process_time() < seconds:
                pass
        read, write = os.pipe()
        if os.fork() == 0:
            if os.fork() == 0:
                os.close(read)
                burn(1.0)
                os.write(write, b"x")
                os._exit(0)
            os._exit(0)
        os.close(write)
        burn(0.5)
        os.read(read, 1)
    """, runtime)
    assert result.status is Status.OK, result
    assert result.cpu_seconds is not None
    assert result.cpu_seconds >= 1.5
