"""A controller SIGKILLed mid-job leaves its container behind; the next start reaps it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import docker
import pytest

from controller.sandbox.executor import ExecutorConfig, SandboxExecutor
from controller.sandbox.reaper import LABEL_NAMESPACE

pytestmark = pytest.mark.docker

CONTROLLER = textwrap.dedent("""
    import sys
    from controller.sandbox.executor import ExecutorConfig, SandboxExecutor
    from controller.sandbox.spec import JobSpec, Limits
    ex = SandboxExecutor(ExecutorConfig(image=sys.argv[1], namespace=sys.argv[2]))
    ex.run(JobSpec(files={"main.py": b"import time; time.sleep(300)"},
                   command=("python3", "main.py"), limits=Limits(wall_seconds=600)))
""")


def _namespace_objects(client: docker.DockerClient, namespace: str) -> tuple[list[str], list[str]]:
    selector = {"label": [f"{LABEL_NAMESPACE}={namespace}"]}
    containers = [c.name for c in client.containers.list(all=True, filters=selector)]
    volumes = [v.name for v in client.volumes.list(filters=selector)]
    return containers, volumes


def test_deny_leftover_containers_after_controller_sigkill(
        docker_client: docker.DockerClient, sandbox_image: str) -> None:
    namespace = f"reap-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen([sys.executable, "-c", CONTROLLER, sandbox_image, namespace])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            running = docker_client.containers.list(
                filters={"label": [f"{LABEL_NAMESPACE}={namespace}"], "status": "running"})
            if running:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the controller subprocess never started its job")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    containers, volumes = _namespace_objects(docker_client, namespace)
    assert len(containers) == 1 and len(volumes) == 1, "SIGKILL should leave the job behind"

    SandboxExecutor(ExecutorConfig(image=sandbox_image, namespace=namespace)).close()
    assert _namespace_objects(docker_client, namespace) == ([], [])
