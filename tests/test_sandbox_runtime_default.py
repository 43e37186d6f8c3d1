"""gVisor by default wherever it is registered with its seccomp enforcement; runc only by
choice or where gVisor is missing, and then said out loud."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from controller.sandbox.backend_config import ExecutorConfig
from controller.sandbox.executor import DockerExecutor, runsc_problem
from controller.sandbox.spec import JobSpec, Status

GOOD = {"Runtimes": {"runc": {"path": "runc"}, "runsc": {
    "path": "/usr/bin/runsc", "runtimeArgs": ["--network=none", "--oci-seccomp"]}}}


def test_runsc_problem_names_what_is_missing_and_the_fix() -> None:
    assert runsc_problem(GOOD) == ""
    missing = runsc_problem({"Runtimes": {"runc": {"path": "runc"}}})
    assert "not registered" in missing and "--oci-seccomp" in missing
    no_seccomp = runsc_problem({"Runtimes": {"runsc": {
        "path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}}})
    assert "without --oci-seccomp" in no_seccomp and "daemon.json" in no_seccomp


@pytest.mark.docker
def test_auto_runs_every_job_under_gvisor_where_it_is_registered(sandbox_image: str) -> None:
    ex = DockerExecutor(ExecutorConfig(image=sandbox_image, slots=1, namespace="pytest"))
    try:
        assert ex.config.runtime == "auto" and ex.runtime == "runsc"
        result = ex.run_job(JobSpec(files={"main.py": b"import os; print(os.uname().release)"},
                                command=("python3", "main.py"), runtime="runc"))
    finally:
        ex.close()
    assert result.status is Status.OK, result
    assert result.stdout.strip() == "4.4.0", result  # gVisor's kernel, not the host's
    assert os.uname().release != "4.4.0"


@pytest.mark.docker
def test_serve_warns_when_it_runs_runc(tmp_path: Path, sandbox_image: str,
                                       docker_client: docker.DockerClient) -> None:
    log = tmp_path / "serve.log"
    port_file = tmp_path / "port"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", "serve",
             "--port-file", str(port_file), "--state-dir", str(tmp_path / "state"),
             "--image", sandbox_image, "--namespace", f"pytest-rt-{os.getpid()}",
             "--runtime", "runc"], stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while "run under runc" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(60)
    text = log.read_text()
    assert "runc shares the host's kernel" in text
    assert 'sandbox.runtime = \\"runc\\" was chosen' in text or \
        'sandbox.runtime = "runc" was chosen' in text
