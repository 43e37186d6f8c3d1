"""SandboxService across principals: a viewer runs no job; a job is labelled with its
caller's principal; a published data id belongs to its publisher, and to anyone else it
is exactly an unknown id."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import grpc
import pytest

from controller.api.gen.bilevel.v1 import sandbox_pb2 as spb
from controller.principals import Principal
from controller.sandbox.reaper import LABEL_NAMESPACE, LABEL_PRINCIPAL
from controller.sandbox.volumes import publish_data_volume
from tests.principals_harness import Caller, cluster, code_of, prepare
from tests.test_api_harness import ServerThread, field_violations

SECRET = "alices-private-data"


def _job(code: str, volume: str = "") -> spb.ExecuteRequest:
    mounts = [spb.DataMount(volume=volume, target="/data/in")] if volume else []
    return spb.ExecuteRequest(files={"main.py": code.encode()}, command=["python3", "main.py"],
                              data_mounts=mounts)


def test_deny_a_viewer_runs_no_sandbox_job(tmp_path: Path) -> None:
    prepare(tmp_path)
    with cluster(tmp_path) as (_, c):
        code, text = code_of(lambda: c["vera"].sandbox.Execute(_job("print(1)"), timeout=30))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "viewer" in text


def test_sensitivity_a_viewer_treated_as_writing_reaches_the_engine(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Principal, "writes", property(lambda self: True))
    prepare(tmp_path)
    with cluster(tmp_path) as (_, c):
        code, _ = code_of(lambda: c["vera"].sandbox.Execute(_job("print(1)"), timeout=60))
        assert code == grpc.StatusCode.UNAVAILABLE  # no Docker engine here


@pytest.fixture
def docker_cluster(tmp_path: Path, sandbox_image: str
                   ) -> Iterator[tuple[ServerThread, dict[str, Caller], str]]:
    prepare(tmp_path / "state", runs=False)  # no resumed run's trials beside the jobs
    namespace = f"pytest-principals-{uuid.uuid4().hex[:8]}"
    with cluster(tmp_path / "state", image=sandbox_image, namespace=namespace) as (s, c):
        yield s, c, namespace


@pytest.mark.docker
def test_a_job_is_labelled_with_its_callers_principal(
        docker_cluster: tuple[ServerThread, dict[str, Caller], str],
        docker_client: docker.DockerClient) -> None:
    _, c, namespace = docker_cluster
    seen: list[str] = []
    stop = threading.Event()
    mine = {"label": f"{LABEL_NAMESPACE}={namespace}"}
    # Only the containers this call starts count (the namespace is this test's own, and
    # its state holds no run that a resume would start).
    before = {found.id for found in docker_client.containers.list(all=True, filters=mine)}

    def look() -> None:
        while not stop.is_set() and not seen:
            for found in docker_client.containers.list(all=True, filters=mine):
                if found.id not in before:
                    seen.append(found.labels.get(LABEL_PRINCIPAL, ""))
            time.sleep(0.1)

    watcher = threading.Thread(target=look)
    watcher.start()
    try:
        events = list(c["alice"].sandbox.Execute(_job("import time; time.sleep(3)"),
                                                 timeout=120))
    finally:
        stop.set()
        watcher.join()
    assert events[-1].finished.result.status == spb.JOB_STATUS_OK
    assert seen and set(seen) == {"alice"}


@pytest.fixture
def alices_data(docker_client: docker.DockerClient, sandbox_image: str, tmp_path: Path,
                docker_cluster: tuple[ServerThread, dict[str, Caller], str]) -> Iterator[str]:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "x.txt").write_text(SECRET)
    data_id = publish_data_volume(docker_client, docker_cluster[2], folder, sandbox_image,
                                  "alice")
    try:
        yield data_id
    finally:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            docker_client.volumes.get(f"bilevel-{data_id}").remove(force=True)


READ = "print(open('/data/in/x.txt').read())"


@pytest.mark.docker
def test_deny_mounting_another_principals_data_id(
        docker_cluster: tuple[ServerThread, dict[str, Caller], str], alices_data: str) -> None:
    _, c, _ = docker_cluster
    unknown = "data-" + "0" * 20
    answers = []
    for volume in (alices_data, unknown):
        with pytest.raises(grpc.RpcError) as info:
            list(c["bob"].sandbox.Execute(_job(READ, volume), timeout=60))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        why = field_violations(info.value)["data_mounts[0].volume"]
        answers.append(why.replace(volume, "ID"))
        assert "alice" not in why
    assert answers[0] == answers[1]  # bob cannot tell alice's id from an unknown one
    for reader in ("alice", "root"):  # its publisher, and an admin
        events = list(c[reader].sandbox.Execute(_job(READ, alices_data), timeout=120))
        assert SECRET in events[-1].finished.result.stdout_head


@pytest.mark.docker
def test_sensitivity_without_the_owner_check_bob_mounts_alices_data(
        docker_cluster: tuple[ServerThread, dict[str, Caller], str], alices_data: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Principal, "sees", lambda self, owner: True)
    _, c, _ = docker_cluster
    events = list(c["bob"].sandbox.Execute(_job(READ, alices_data), timeout=120))
    assert SECRET in events[-1].finished.result.stdout_head
