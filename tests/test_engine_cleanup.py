"""Clean-up on a real engine that never disturbs a job: two controllers running the same
task data at once, in two namespaces or in one; a half-filled volume in use; a sweep
that meets a volume a job mounts; holders that keep a volume from other controllers'
sweeps; task image tags per controller."""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.sandbox.backend import Sweep
from controller.sandbox.backend_config import ExecutorConfig
from controller.sandbox.executor import DockerExecutor
from controller.sandbox.reaper import LABEL_NAMESPACE, LABEL_OWNER
from controller.sandbox.spec import DataMount, JobResult, JobSpec, Limits, Status
from controller.sandbox.task_image_tags import (
    hold_task_image,
    namespace_tag,
    release_task_image,
    sweep_task_images,
)
from controller.sandbox.volumes import (
    LABEL_HOLDS,
    LABEL_STORE,
    data_volume_name,
    ensure_data_volume,
    hold_data_volume,
    shared_labels,
    sweep_data_volumes,
)
from controller.store.resources import store_gone, store_scope
from controller.store.task_bundle import read_task_dir
from tests.test_api_harness import ServerThread, Stubs, make_config, serving, wait_for_engine
from tests.test_run_deletion import (
    exists,
    remove_namespace,
    task_request,
    trials_of,
    unclaimed,
    volumes_of,
    wait_running_job,
    write_task,
)


@pytest.fixture
def namespace(docker_client: docker.DockerClient) -> Iterator[str]:
    name = f"pytest-clean-{uuid.uuid4().hex[:8]}"
    yield name
    remove_namespace(docker_client, name)


# Two controllers, one engine, the same task data, at the same time.


@pytest.mark.docker
@pytest.mark.parametrize("shared", [False, True], ids=["two-namespaces", "one-namespace"])
def test_two_controllers_with_the_same_task_data_never_disturb_each_others_jobs(
        tmp_path: Path, sandbox_image: str, docker_client: docker.DockerClient,
        shared: bool) -> None:
    """Two controllers on one engine run the same task at the same time; A cancels and
    deletes its run mid-trial and sweeps. In two namespaces (one per controller, as
    deployed) each has its own volumes; in one namespace they share them, and B's
    holders keep A's clean-up off them. B's run is never disturbed."""
    root = write_task(tmp_path / "task", sleep=4.0)
    files = read_task_dir(root)
    spaces = [f"pytest-two-{c}-{uuid.uuid4().hex[:6]}" for c in "ab"]
    if shared:
        spaces[1] = spaces[0]
    servers = [ServerThread(make_config(tmp_path / f"state-{i}", sandbox_image,
                                        namespace=ns)) for i, ns in enumerate(spaces)]
    try:
        a, b = (Stubs(s.address) for s in servers)
        for stubs in (a, b):
            wait_for_engine(stubs)
        run_a = a.runs.CreateRun(task_request(files, trials=3), timeout=120)
        run_b = b.runs.CreateRun(task_request(files, trials=2), timeout=120)
        job_b = wait_running_job(docker_client, run_b.id, spaces[1])
        wait_running_job(docker_client, run_a.id, spaces[0])
        own = [volumes_of(root, ns) for ns in spaces]
        if shared:
            assert own[0] == own[1]
        else:
            assert set(own[0].values()).isdisjoint(own[1].values())
        data_b = own[1]["data/train"]

        # A deletes its run mid-trial and sweeps, while B's job reads B's copy.
        deleted = a.runs.DeleteRun(rpb.DeleteRunRequest(run_id=run_a.id, cancel=True),
                                   timeout=120)
        if shared:
            assert deleted.kept[data_b] == "in use by a container"
        else:
            assert own[0]["data/train"] in deleted.removed
        swept = servers[0].server.janitor.sweep()  # type: ignore[union-attr]
        assert not set(swept.removed) & set(own[1].values())
        job_b.reload()
        assert job_b.status == "running" and exists(docker_client, data_b)
        # Between B's jobs too: B's holder keeps the volume while B's run lives.
        next(e for e in b.runs.WatchRun(rpb.WatchRunRequest(run_id=run_b.id), timeout=120)
             if e.HasField("trial_finished"))
        assert data_b not in servers[0].server.janitor.sweep().removed  # type: ignore[union-attr]

        trials = trials_of(b, run_b.id)
        final = b.runs.GetRun(rpb.GetRunRequest(run_id=run_b.id))
        assert final.state == rpb.RUN_STATE_SUCCEEDED, final.stop_reason
        assert len(trials) == 3
        assert all(t.status != rpb.TRIAL_STATUS_CRASH for t in trials), trials
        baseline = next(t for t in trials if t.trial == 0)
        assert json.loads(baseline.metrics_json)["loss"] == pytest.approx(2.25)
        # B's run finished: nothing holds its volumes now, and B's own sweep removes them.
        assert sorted(servers[1].server.janitor.sweep().removed) == sorted(  # type: ignore[union-attr]
            own[1].values())
    finally:
        for server in servers:
            server.stop()
        for ns in set(spaces):
            remove_namespace(docker_client, ns)


# Clean-up never fails a trial.


@pytest.mark.docker
def test_a_half_filled_volume_in_use_never_fails_a_trial(
        tmp_path: Path, sandbox_image: str, docker_client: docker.DockerClient,
        namespace: str) -> None:
    """The CI failure of issue 19: a run met a half-filled data volume that a container
    still used, tried to remove it and crashed its baseline with `409 volume is in use`.
    Now the run fills it again in place; the sweep keeps it while the container stays,
    and removes it once nothing uses it."""
    root = write_task(tmp_path / "task")
    name = volumes_of(root, namespace)["data/eval"]
    docker_client.volumes.create(name=name, labels=shared_labels(namespace))
    holder = docker_client.containers.create(
        sandbox_image, command=["true"], labels={LABEL_NAMESPACE: namespace},
        mounts=[docker.types.Mount(target="/fill", source=name, type="volume")])
    partial = io.BytesIO()
    with tarfile.open(fileobj=partial, mode="w") as tar:  # a fill cut short: no mark
        info = tarfile.TarInfo("target.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"9\n"))
    assert holder.put_archive("/fill", partial.getvalue())
    try:
        with serving(tmp_path / "state", sandbox_image, namespace=namespace) as server:
            stubs = Stubs(server.address)
            wait_for_engine(stubs)
            run = stubs.runs.CreateRun(task_request(read_task_dir(root), trials=2),
                                       timeout=120)
            trials = trials_of(stubs, run.id)
            assert all(t.status != rpb.TRIAL_STATUS_CRASH for t in trials), trials
            baseline = next(t for t in trials if t.trial == 0)
            assert json.loads(baseline.metrics_json)["loss"] == pytest.approx(2.25)

            swept = server.server.janitor.sweep()  # type: ignore[union-attr]
            assert swept.kept[name] == "in use by a container"
            holder.remove(force=True)
            assert name in server.server.janitor.sweep().removed  # type: ignore[union-attr]
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            holder.remove(force=True)


@pytest.mark.docker
def test_sweep_skips_a_volume_a_job_is_using_and_the_job_succeeds(
        sandbox_image: str, docker_client: docker.DockerClient, tmp_path: Path,
        namespace: str) -> None:
    """An unclaimed volume that a running job mounts: the sweep's removal meets the
    engine's 409, keeps it, and the job reads its data to the end."""
    executor = DockerExecutor(ExecutorConfig(image=sandbox_image, namespace=namespace))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.txt").write_text("42\n")
    name = data_volume_name(namespace, "test-data")
    ensure_data_volume(docker_client, name, tmp_path / "data", sandbox_image,
                       shared_labels(namespace))
    spec = JobSpec(files={"main.py": b"import time\ntime.sleep(3)\n"
                                     b"print(open('/data/in/x.txt').read().strip())\n"},
                   command=("python3", "main.py"), limits=Limits(wall_seconds=60),
                   data_mounts=(DataMount(source=name, target="/data/in"),))
    results: list[JobResult] = []
    job = threading.Thread(target=lambda: results.append(executor.run_job(spec)))
    job.start()
    try:
        wait_running_job(docker_client, "execute", namespace)
        sweep = sweep_data_volumes(docker_client, namespace, "no-store", unclaimed, unclaimed)
        assert sweep.kept == {name: "in use by a container"} and sweep.removed == []
    finally:
        job.join(120)
        executor.close()
    (result,) = results
    assert result.status is Status.OK and result.stdout_head.strip() == "42"
    assert sweep_data_volumes(docker_client, namespace, "no-store", unclaimed,
                              unclaimed).removed == [name]


@pytest.mark.docker
def test_a_holder_keeps_a_volume_from_every_other_controllers_sweep(
        sandbox_image: str, docker_client: docker.DockerClient, namespace: str,
        tmp_path: Path) -> None:
    """No job runs: only run-b's holder (made by store B) uses the volume. Store A's sweep
    in the same namespace keeps it and leaves B's holder alone; once run-b is no longer
    live, B's own sweep releases the holder and removes the volume. A holder whose store
    was removed from this host is released by any controller's sweep."""
    name = data_volume_name(namespace, "held")
    docker_client.volumes.create(name=name, labels=shared_labels(namespace))
    gone = store_scope(tmp_path / "removed-state-dir")
    hold_data_volume(docker_client, name, sandbox_image, namespace, "run-x", gone)
    assert sweep_data_volumes(docker_client, namespace, "host:/state-a", unclaimed,
                              unclaimed).kept == {name: "in use by a container"}
    assert sweep_data_volumes(docker_client, namespace, "host:/state-a", unclaimed,
                              unclaimed, store_gone).removed == [name]
    docker_client.volumes.create(name=name, labels=shared_labels(namespace))
    hold_data_volume(docker_client, name, sandbox_image, namespace, "run-b", "host:/state-b")
    hold_data_volume(docker_client, name, sandbox_image, namespace, "run-b", "host:/state-b")
    holders = docker_client.containers.list(
        all=True, filters={"label": [f"{LABEL_NAMESPACE}={namespace}", LABEL_HOLDS]})
    assert len(holders) == 1  # one per run, volume and store
    assert holders[0].labels[LABEL_OWNER] == "run-b"
    assert holders[0].labels[LABEL_STORE] == "host:/state-b"

    swept_by_a = sweep_data_volumes(docker_client, namespace, "host:/state-a", unclaimed,
                                    unclaimed)
    assert swept_by_a.kept == {name: "in use by a container"} and exists(docker_client, name)
    live_b = sweep_data_volumes(docker_client, namespace, "host:/state-b",
                                lambda run_id: run_id == "run-b", unclaimed)
    assert live_b.kept == {name: "in use by a container"}
    assert sweep_data_volumes(docker_client, namespace, "host:/state-b", unclaimed,
                              unclaimed).removed == [name]
    assert docker_client.containers.list(
        all=True, filters={"label": [f"{LABEL_NAMESPACE}={namespace}", LABEL_HOLDS]}) == []


# Task images: one tag per controller.


@pytest.fixture
def fake_task_image(docker_client: docker.DockerClient, sandbox_image: str) -> Iterator[str]:
    """A task image of its own (a label on the sandbox image), as task_image.py tags it."""
    tag = f"bilevel-task:{uuid.uuid4().hex[:16]}"
    dockerfile = f"FROM {sandbox_image}\nLABEL dev.bilevel.test={uuid.uuid4().hex}\n"
    image, _ = docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag,
                                          rm=True, network_mode="none")
    yield tag
    with contextlib.suppress(docker.errors.ImageNotFound):
        docker_client.images.remove(image.id, force=True)


@pytest.mark.docker
def test_task_image_tags_are_per_controller_and_the_image_goes_with_the_last(
        docker_client: docker.DockerClient, fake_task_image: str) -> None:
    namespace = "pytest-img"  # two controllers (stores) sharing one namespace
    mine, theirs = (hold_task_image(docker_client, fake_task_image, namespace, store)
                    for store in ("host:/state-a", "host:/state-b"))
    assert mine == namespace_tag(fake_task_image, namespace, "host:/state-a") != theirs
    image_id = docker_client.images.get(fake_task_image).id

    sweep = Sweep()
    release_task_image(docker_client, mine, lambda _tag: True, sweep)
    assert sweep.kept == {mine: "used by a run of this controller"}
    release_task_image(docker_client, mine, unclaimed, sweep)
    # The other controller still holds the image: only our tag went.
    assert sorted(docker_client.images.get(image_id).tags) == sorted([fake_task_image,
                                                                        theirs])
    # Their job uses it and their last tag goes: the build tag goes, the image stays (409).
    job = docker_client.containers.create(theirs, command=["true"])
    try:
        sweep = sweep_task_images(docker_client, namespace, "host:/state-b", unclaimed)
        assert sweep.kept == {theirs: "in use by a container"}
        assert docker_client.images.get(image_id).tags == [theirs]
    finally:
        job.remove(force=True)
    assert sweep_task_images(docker_client, namespace, "host:/state-b",
                             unclaimed).removed == [theirs]
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(image_id)
