"""The warm pool on the real engine: a pooled container serves exactly one job and is
then destroyed (a marker one job leaves is never seen by the next), waiting containers
are labelled and owned like jobs, take no slot and are removed when idle, a dead one is
skipped for a cold start, and a killed controller's pool is gone after its successor's
start-up sweep."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from controller.sandbox.backend_config import ExecutorConfig, PoolConfig
from controller.sandbox.executor import DockerExecutor
from controller.sandbox.reaper import (
    LABEL_CONTROLLER,
    LABEL_DEADLINE,
    LABEL_NAMESPACE,
    LABEL_PRINCIPAL,
)
from controller.sandbox.spec import JobSpec, Limits, Status
from controller.sandbox.warm_pool import LABEL_POOL

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[1]
MARKERS = ("/job/work/marker", "/job/out/marker", "/tmp/marker", "/dev/shm/marker")
LEAVE = "import socket\nfor p in %r:\n    open(p, 'w').write('x')\nprint(socket.gethostname())\n"
LOOK = "import os, socket\nprint([p for p in %r if os.path.exists(p)], socket.gethostname())\n"


def _job(code: str, wall: float = 30) -> JobSpec:
    return JobSpec(files={"main.py": code.encode()}, command=("python3", "main.py"),
                   limits=Limits(wall_seconds=wall), runtime="runc")


def _until(check: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture
def pooled(sandbox_image: str) -> Iterator[tuple[DockerExecutor, str]]:
    namespace = f"pytest-pool-{uuid.uuid4().hex[:8]}"
    ex = DockerExecutor(ExecutorConfig(image=sandbox_image, slots=1, namespace=namespace,
                                       runtime="runc", pool=PoolConfig(size=1)))
    try:
        yield ex, namespace
    finally:
        ex.close()


def _pooled_containers(client: docker.DockerClient, namespace: str) -> list[dict[str, str]]:
    rows = client.api.containers(all=True, filters={"label": [
        f"{LABEL_NAMESPACE}={namespace}", f"{LABEL_POOL}=1"]})
    return [row["Labels"] for row in rows]


def test_a_pooled_container_serves_one_job_and_is_never_reused(
        pooled: tuple[DockerExecutor, str], docker_client: docker.DockerClient) -> None:
    ex, namespace = pooled
    first = ex.run_job(_job(LEAVE % (MARKERS,)))
    assert first.status is Status.OK and not first.timings.warm, first  # an empty pool
    _until(lambda: ex.pool.idle() == 1)  # refilled while the first job ran
    second = ex.run_job(_job(LOOK % (MARKERS,)))
    assert second.status is Status.OK and second.timings.warm, second
    seen, host = second.stdout_head.strip().rsplit(" ", 1)
    assert seen == "[]" and host != first.stdout_head.strip()  # a fresh container
    _until(lambda: ex.pool.idle() == 1)
    third = ex.run_job(_job(LOOK % (MARKERS,)))
    assert third.timings.warm and third.stdout_head.strip().rsplit(" ", 1)[1] not in (
        host, first.stdout_head.strip())
    # Used once: no container of a finished job is left; only the one waiting.
    _until(lambda: len(docker_client.api.containers(all=True, filters={"label": [
        f"{LABEL_NAMESPACE}={namespace}"]})) == 1)


def test_waiting_containers_are_owned_like_jobs_and_take_no_slot(
        pooled: tuple[DockerExecutor, str], docker_client: docker.DockerClient) -> None:
    ex, namespace = pooled
    ex.run_job(_job("print(1)"))
    _until(lambda: ex.pool.idle() == 1)
    (labels,) = _pooled_containers(docker_client, namespace)
    assert labels[LABEL_PRINCIPAL] and labels[LABEL_CONTROLLER]
    assert float(labels[LABEL_DEADLINE]) > time.time() + ex.pool.config.idle_seconds
    # One slot, one container waiting: a job still gets the slot at once.
    done = ex.run_job(_job("print(2)"), slot_timeout=1)
    assert done.status is Status.OK


def test_idle_containers_are_removed_and_a_dead_one_means_a_cold_start(
        sandbox_image: str, docker_client: docker.DockerClient) -> None:
    namespace = f"pytest-pool-{uuid.uuid4().hex[:8]}"
    ex = DockerExecutor(ExecutorConfig(image=sandbox_image, slots=1, namespace=namespace,
                                       runtime="runc",
                                       pool=PoolConfig(size=1, idle_seconds=3)))
    try:
        ex.run_job(_job("print(1)"))
        _until(lambda: ex.pool.idle() == 1)
        _until(lambda: not _pooled_containers(docker_client, namespace), 30)
        assert ex.pool.idle() == 0
        ex.run_job(_job("print(1)"))
        _until(lambda: ex.pool.idle() == 1)
        for row in docker_client.api.containers(filters={"label": [f"{LABEL_POOL}=1",
                                                                   f"{LABEL_NAMESPACE}={namespace}"]}):
            docker_client.api.kill(row["Id"])  # it died while waiting
        done = ex.run_job(_job("print('cold')"))
        assert done.status is Status.OK and not done.timings.warm
        assert done.stdout_head.strip() == "cold"
    finally:
        ex.close()


KILLED = """
import os, signal, sys, time
from controller.sandbox.backend_config import ExecutorConfig, PoolConfig
from controller.sandbox.executor import DockerExecutor
from controller.sandbox.spec import JobSpec, Limits
ex = DockerExecutor(ExecutorConfig(image=sys.argv[1], slots=1, namespace=sys.argv[2],
                                   runtime="runc", pool=PoolConfig(size=2)))
ex.run_job(JobSpec(files={"m.py": b"print(1)"}, command=("python3", "m.py"),
                   limits=Limits(wall_seconds=30), runtime="runc"))
while ex.pool.idle() < 2:
    time.sleep(0.1)
print("ready", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_controllers_pool_is_gone_after_its_successors_start_up_sweep(
        sandbox_image: str, docker_client: docker.DockerClient) -> None:
    namespace = f"pytest-pool-{uuid.uuid4().hex[:8]}"
    done = subprocess.run([sys.executable, "-c", KILLED, sandbox_image, namespace],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == -signal.SIGKILL and "ready" in done.stdout, done.stderr
    assert len(_pooled_containers(docker_client, namespace)) == 2  # left waiting
    successor = DockerExecutor(ExecutorConfig(image=sandbox_image, slots=1,
                                              namespace=namespace, runtime="runc"))
    try:
        assert _pooled_containers(docker_client, namespace) == []
        assert not docker_client.api.volumes(filters={"label": [
            f"{LABEL_NAMESPACE}={namespace}"]}).get("Volumes")
    finally:
        successor.close()


def test_deny_a_principals_waiting_container_never_serves_another(
        pooled: tuple[DockerExecutor, str]) -> None:
    ex, _ = pooled
    alice, bob = (ex.for_owner("execute", principal=p) for p in ("alice", "bob"))
    alice.run_job(_job("print(1)"))
    _until(lambda: ex.pool.idle() == 1)  # alice's class has one waiting
    done = bob.run_job(_job("print(1)"))
    assert done.status is Status.OK and not done.timings.warm  # not alice's container
    assert alice.run_job(_job("print(1)")).timings.warm  # hers is still there for her


def test_sensitivity_without_the_principal_in_the_class_bob_gets_alices_container(
        pooled: tuple[DockerExecutor, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from controller.sandbox import docker_job, executor

    original = docker_job.class_key
    monkeypatch.setattr(executor, "class_key", lambda spec, image, labels: original(
        spec, image, {k: v for k, v in labels.items() if k != LABEL_PRINCIPAL}))
    ex, _ = pooled
    alice, bob = (ex.for_owner("execute", principal=p) for p in ("alice", "bob"))
    alice.run_job(_job("print(1)"))
    _until(lambda: ex.pool.idle() == 1)
    assert bob.run_job(_job("print(1)")).timings.warm
