"""The reaper: a controller SIGKILLed mid-job leaves its container behind and the next
start reaps it; objects someone else removes during a sweep are skipped, never fatal."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import docker
import docker.errors
import pytest

from controller.sandbox.backend_config import ExecutorConfig
from controller.sandbox.executor import DockerExecutor
from controller.sandbox.reaper import LABEL_NAMESPACE, reap

pytestmark = pytest.mark.docker

CONTROLLER = textwrap.dedent("""
    import sys
    from controller.sandbox.backend import SandboxBackend
    from controller.sandbox.backend_config import ExecutorConfig
    from controller.sandbox.executor import DockerExecutor
    from controller.sandbox.spec import JobSpec, Limits
    ex = DockerExecutor(ExecutorConfig(image=sys.argv[1], namespace=sys.argv[2]))
    ex.run_job(JobSpec(files={"main.py": b"import time; time.sleep(300)"},
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

    DockerExecutor(ExecutorConfig(image=sandbox_image, namespace=namespace)).close()
    assert _namespace_objects(docker_client, namespace) == ([], [])


# -- objects removed by someone else while a sweep runs (issue 11 #12, issue 15 #4) --------

DEAD_OWNER = "no-such-host-for-bilevel:1:1"  # another host, deadline long past: an orphan


def _orphans(client: docker.DockerClient, image: str, namespace: str, count: int) -> list[str]:
    """`count` stopped orphan containers (and one volume each) in `namespace`."""
    labels = {"io.bilevel.managed": "1", LABEL_NAMESPACE: namespace,
              "io.bilevel.controller": DEAD_OWNER, "io.bilevel.deadline": "0"}
    ids = []
    for i in range(count):
        name = f"bilevel-reap-race-{namespace}-{i}"
        client.volumes.create(name=name, labels=labels)
        ids.append(client.containers.create(
            image, command=["true"], name=name, labels=labels, network_disabled=True,
            mounts=[docker.types.Mount(target="/job", source=name, type="volume")]).id)
    return ids


def _remove_all(client: docker.DockerClient, namespace: str) -> None:
    selector = {"label": [f"{LABEL_NAMESPACE}={namespace}"]}
    for row in client.api.containers(all=True, filters=selector):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            client.api.remove_container(row["Id"], force=True)
    for volume in client.volumes.list(filters=selector):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            volume.remove(force=True)


def test_deny_sweep_aborted_by_containers_removed_concurrently(
        docker_client: docker.DockerClient, sandbox_image: str) -> None:
    """A second client removes the orphans while sweeps run; no sweep may fail."""
    namespace = f"race-{uuid.uuid4().hex[:8]}"
    ids = _orphans(docker_client, sandbox_image, namespace, 24)
    other = docker.DockerClient(**docker.utils.kwargs_from_env())
    errors: list[BaseException] = []

    def rival() -> None:
        for cid in reversed(ids):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                other.api.remove_container(cid, force=True)

    try:
        thread = threading.Thread(target=rival)
        thread.start()
        while thread.is_alive():
            try:
                reap(docker_client, namespace)
            except Exception as exc:  # the assertion below reports it
                errors.append(exc)
        thread.join()
        reap(docker_client, namespace)  # volumes freed by the rival's removals
        assert errors == []
        assert _namespace_objects(docker_client, namespace) == ([], [])
    finally:
        _remove_all(docker_client, namespace)
        other.close()


def _client_with_rival(namespace: str) -> docker.DockerClient:
    """A client whose first container removal finds the container already removed by
    another client: the engine's real 404, at the worst moment."""
    client = docker.DockerClient(**docker.utils.kwargs_from_env())
    rival = docker.DockerClient(**docker.utils.kwargs_from_env())
    original = client.api.remove_container
    raced: list[str] = []

    def remove_container(container: str, **kwargs: object) -> None:
        if not raced:
            raced.append(container)
            rival.api.remove_container(container, force=True)
        original(container, **kwargs)

    client.api.remove_container = remove_container
    return client


def test_deny_sweep_aborted_by_a_404_on_remove(docker_client: docker.DockerClient,
                                               sandbox_image: str) -> None:
    namespace = f"race-{uuid.uuid4().hex[:8]}"
    _orphans(docker_client, sandbox_image, namespace, 3)
    client = _client_with_rival(namespace)
    try:
        report = reap(client, namespace)
        assert report.containers == 2  # the third was gone already: skipped, not fatal
        reap(client, namespace)
        assert _namespace_objects(docker_client, namespace) == ([], [])
        # The executor's start-up sweep meets the same race without failing to start.
        _orphans(docker_client, sandbox_image, namespace, 2)
        DockerExecutor(ExecutorConfig(image=sandbox_image, namespace=namespace)).close()
    finally:
        _remove_all(docker_client, namespace)
        client.close()


def test_sensitivity_sweep_without_404_tolerance_aborts(
        docker_client: docker.DockerClient, sandbox_image: str) -> None:
    """Twin of the test above: with the tolerance switched off, the same race aborts the
    sweep with NotFound and leaves the remaining orphans behind."""
    namespace = f"race-{uuid.uuid4().hex[:8]}"
    _orphans(docker_client, sandbox_image, namespace, 3)
    client = _client_with_rival(namespace)
    try:
        with pytest.raises(docker.errors.NotFound):
            reap(client, namespace, skip_vanished=False)
        containers, _ = _namespace_objects(docker_client, namespace)
        assert len(containers) == 2
    finally:
        _remove_all(docker_client, namespace)
        client.close()
