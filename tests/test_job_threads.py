"""Thread pools sized by the job's CPU limit, not by the host's cores (issue #24): every
job gets OMP/MKL/OpenBLAS/... thread counts at its CPU limit, rounded up, and torch,
which reads OMP_NUM_THREADS at import, starts that many threads. A count the job spec
sets itself is kept. The twin shows torch taking every core the container sees when the
controller sets nothing."""

from __future__ import annotations

import json

import pytest

from controller.sandbox import docker_job, hardening
from controller.sandbox.backend import SandboxBackend
from controller.sandbox.hardening import THREAD_ENV_NAMES, job_env, runner_job
from controller.sandbox.spec import JobSpec, Limits, Status

SHOW_THREADS = b"""
import json, os
import torch
print(json.dumps({"torch": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                  "env": {k: os.environ.get(k) for k in (
                      "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                      "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")}}))
"""


def threads_job(cpus: float, env: dict[str, str] | None = None) -> JobSpec:
    return JobSpec(files={"main.py": SHOW_THREADS}, command=("python3", "main.py"),
                   limits=Limits(cpus=cpus, wall_seconds=60), env=env or {})


def shown(executor: SandboxBackend, spec: JobSpec) -> dict[str, object]:
    result = executor.run_job(spec)
    assert result.status == Status.OK, result.stderr
    out: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def test_thread_counts_follow_the_cpu_limit_rounded_up() -> None:
    for cpus, want in ((0.25, "1"), (1.0, "1"), (1.5, "2"), (4.0, "4")):
        env = runner_job(threads_job(cpus))["env"]
        assert {k: env[k] for k in THREAD_ENV_NAMES} == dict.fromkeys(THREAD_ENV_NAMES, want)
    # The job spec's own value is kept (the user's explicit choice); its OMP_NUM_THREADS
    # is the others' default (torch with MKL sizes its pool by MKL_NUM_THREADS).
    env = job_env(threads_job(1.0, {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "2",
                                    "TRIAL_SEED": "7"}))
    assert env["OMP_NUM_THREADS"] == "3" and env["MKL_NUM_THREADS"] == "2"
    assert env["OPENBLAS_NUM_THREADS"] == "3" and env["TRIAL_SEED"] == "7"
    assert job_env(threads_job(2.0, {"OMP_NUM_THREADS": "x"}))["MKL_NUM_THREADS"] == "2"


@pytest.mark.docker
def test_torch_in_a_job_uses_one_thread_under_one_cpu(executor: SandboxBackend) -> None:
    out = shown(executor, threads_job(1.0))
    assert out["torch"] == 1
    assert out["env"] == dict.fromkeys(
        ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
         "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"), "1")
    assert isinstance(out["cpu_count"], int)  # the host's cores are still visible
    # A user's own count wins, and 1.5 CPUs give 2 threads.
    assert shown(executor, threads_job(1.0, {"OMP_NUM_THREADS": "2"}))["torch"] == 2
    assert shown(executor, threads_job(1.5))["torch"] == 2


@pytest.mark.docker
def test_sensitivity_torch_takes_every_visible_core_without_the_thread_env(
        executor: SandboxBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docker_job, "runner_job", lambda spec: {
        **hardening.runner_job(spec), "env": dict(spec.env)})
    out = shown(executor, threads_job(1.0))
    assert out["env"]["OMP_NUM_THREADS"] is None  # type: ignore[index]
    assert out["torch"] == out["cpu_count"]
    if out["cpu_count"] == 1:
        pytest.skip("one visible core: torch's default is already the limit")
