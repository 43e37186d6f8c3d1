"""Deleting runs on a real engine, over a real gRPC socket: DeleteRun and `bilevel
delete` remove a run's rows, artifacts, stored task copy, data volumes and task image
tag; labels on what a run creates; the state dir's disk budget. The helpers here are
shared with tests/test_engine_cleanup.py."""

from __future__ import annotations

import os
import sqlite3
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.research.tasks.generic import folder_digest
from controller.sandbox.reaper import (
    LABEL_CONTROLLER,
    LABEL_NAMESPACE,
    LABEL_OWNER,
    OWNER_RUNS,
    this_owner,
)
from controller.sandbox.task_image_tags import namespace_tag
from controller.sandbox.volumes import data_volume_name
from controller.store import task_bundle
from controller.store.records import RunState
from controller.store.resources import store_scope
from controller.store.runs import RunStore
from controller.store.task_bundle import read_task_dir
from tests.test_api_harness import (
    Stubs,
    field_violations,
    leftover_containers,
    serving,
    wait_for_engine,
)
from tests.test_cli_commands import bilevel

MANIFEST = """\
name = "delete-test-task"
editable = "train.py"
metric = "loss"
direction = "minimize"

[train]
command = ["python3", "train.py"]
mounts = {"data/train" = "/data/train"}
wall_seconds = 120
outputs = "out"

[score]
command = ["python3", "score.py"]
mounts = {"data/eval" = "/data/eval"}
wall_seconds = 60

[knobs]
X = {low = -4.0, high = 4.0}
"""


def write_task(root: Path, sleep: float = 0.0) -> Path:
    """Phase 1 reads its data folder and sleeps `sleep` seconds (not a knob); the scorer
    reads the target from its own data folder."""
    (root / "data" / "train").mkdir(parents=True)
    (root / "data" / "eval").mkdir(parents=True)
    (root / "bilevel-task.toml").write_text(MANIFEST)
    (root / "train.py").write_text(textwrap.dedent(f"""\
        import json
        import os
        import time

        X = 2.0

        start = float(open("/data/train/start.txt").read())
        time.sleep({sleep!r})
        os.makedirs("out", exist_ok=True)
        with open("out/x.json", "w") as f:
            json.dump({{"x": X + start}}, f)
    """))
    (root / "score.py").write_text(textwrap.dedent("""\
        import json
        x = json.load(open("out/x.json"))["x"]
        target = float(open("/data/eval/target.txt").read())
        print(json.dumps({"loss": (x - target) ** 2}))
    """))
    (root / "data" / "train" / "start.txt").write_text("0.0\n")
    (root / "data" / "eval" / "target.txt").write_text("0.5\n")
    return root


def task_request(files: dict[str, bytes], trials: int, seed: int = 3) -> rpb.CreateRunRequest:
    return rpb.CreateRunRequest(task=rpb.TaskSpec(task_files=files),
                                search=rpb.SearchSettings(seed=seed, final_seeds=0),
                                budgets=rpb.Budgets(max_trials=trials))


def volumes_of(root: Path, namespace: str) -> dict[str, str]:
    """The Docker names the task's data folders get in `namespace`."""
    return {folder: data_volume_name(namespace, f"taskdata-{folder_digest(root / folder)}")
            for folder in ("data/train", "data/eval")}


def exists(client: docker.DockerClient, volume: str) -> bool:
    try:
        client.volumes.get(volume)
        return True
    except docker.errors.NotFound:
        return False


def trials_of(stubs: Stubs, run_id: str) -> list[rpb.RunEvent.TrialFinished]:
    events = stubs.runs.WatchRun(rpb.WatchRunRequest(run_id=run_id), timeout=300)
    return [e.trial_finished for e in events if e.HasField("trial_finished")]


def wait_running_job(client: docker.DockerClient, owner: str, namespace: str = "") -> Any:
    """The running job container of `owner` (a run id), labelled with it."""
    labels = [f"{LABEL_OWNER}={owner}"] + ([f"{LABEL_NAMESPACE}={namespace}"] if namespace
                                           else [])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = client.containers.list(filters={"label": labels, "status": "running"})
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no job of {owner} started")


def unclaimed(_name: str) -> bool:
    return False


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def remove_namespace(client: docker.DockerClient, namespace: str) -> None:
    """Every container and volume labelled with `namespace` (a test's own)."""
    selector = {"label": [f"{LABEL_NAMESPACE}={namespace}"]}
    for container in client.containers.list(all=True, filters=selector):
        container.remove(force=True)
    for volume in client.volumes.list(filters=selector):
        volume.remove(force=True)


@pytest.fixture
def namespace(docker_client: docker.DockerClient) -> Iterator[str]:
    name = f"pytest-del-{uuid.uuid4().hex[:8]}"
    yield name
    remove_namespace(docker_client, name)


# DeleteRun over gRPC.


@pytest.mark.docker
def test_delete_run_removes_rows_artifacts_task_copy_and_data_volumes(
        tmp_path: Path, sandbox_image: str, docker_client: docker.DockerClient,
        namespace: str) -> None:
    root = write_task(tmp_path / "task")
    files = read_task_dir(root)
    state = tmp_path / "state"
    names = volumes_of(root, namespace)
    with serving(state, sandbox_image, namespace=namespace) as server:
        stubs = Stubs(server.address)
        wait_for_engine(stubs)
        runs = [stubs.runs.CreateRun(task_request(files, trials=1), timeout=120)
                for _ in range(2)]
        for run in runs:
            assert all(t.status != rpb.TRIAL_STATUS_CRASH for t in trials_of(stubs, run.id))
        # Both runs use one copy of the task and one volume per data folder.
        links = os.stat(task_bundle.task_dir(state / "runs", runs[0].id) / "train.py")
        assert links.st_nlink == 3
        for name in names.values():
            labels = docker_client.volumes.get(name).attrs["Labels"]
            assert labels[LABEL_NAMESPACE] == namespace and labels[LABEL_OWNER] == OWNER_RUNS

        with pytest.raises(grpc.RpcError) as err:
            stubs.runs.DeleteRun(rpb.DeleteRunRequest())
        assert "run_id" in field_violations(err.value)
        assert code_of(lambda: stubs.runs.DeleteRun(
            rpb.DeleteRunRequest(run_id="run-000000000000"))) == grpc.StatusCode.NOT_FOUND

        first = stubs.runs.DeleteRun(rpb.DeleteRunRequest(run_id=runs[0].id))
        assert first.freed_bytes > 0  # its trials' artifacts; the task copy is shared
        # Only a running or paused run needs data: both are finished, so the volumes go.
        assert sorted(first.removed) == sorted(names.values())
        assert not any(exists(docker_client, n) for n in names.values())
        assert code_of(lambda: stubs.runs.GetRun(
            rpb.GetRunRequest(run_id=runs[0].id))) == grpc.StatusCode.NOT_FOUND
        assert code_of(lambda: stubs.runs.DeleteRun(
            rpb.DeleteRunRequest(run_id=runs[0].id))) == grpc.StatusCode.NOT_FOUND
        assert not (state / "runs" / runs[0].id).exists()
        assert read_task_dir(task_bundle.task_dir(state / "runs", runs[1].id)) == files

        second = stubs.runs.DeleteRun(rpb.DeleteRunRequest(run_id=runs[1].id))
        assert (state / "runs" / task_bundle.SHARED_DIR).is_dir()
        assert list((state / "runs" / task_bundle.SHARED_DIR).iterdir()) == []
        assert second.freed_bytes > first.freed_bytes  # now with the task copy
        assert second.removed == [] and server.server.janitor.sweep().removed == []  # type: ignore[union-attr]
        assert stubs.runs.ListRuns(rpb.ListRunsRequest()).runs == []
    db = sqlite3.connect(state / "bilevel.sqlite3")
    for table in ("trials", "events", "llm_calls", "mechanisms", "run_resources"):
        assert db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0, table


@pytest.mark.docker
def test_delete_refuses_a_running_run_and_cancels_it_when_asked(
        tmp_path: Path, sandbox_image: str, docker_client: docker.DockerClient,
        namespace: str) -> None:
    root = write_task(tmp_path / "task", sleep=60.0)
    names = volumes_of(root, namespace)
    with serving(tmp_path / "state", sandbox_image, namespace=namespace) as server:
        stubs = Stubs(server.address)
        wait_for_engine(stubs)
        run = stubs.runs.CreateRun(task_request(read_task_dir(root), trials=5), timeout=120)
        job = wait_running_job(docker_client, run.id, namespace)
        labels = job.labels
        assert labels[LABEL_NAMESPACE] == namespace
        assert labels[LABEL_OWNER] == run.id
        assert labels[LABEL_CONTROLLER] == this_owner()

        with pytest.raises(grpc.RpcError) as err:
            stubs.runs.DeleteRun(rpb.DeleteRunRequest(run_id=run.id))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "cancel it first" in (err.value.details() or "")
        assert stubs.runs.GetRun(rpb.GetRunRequest(run_id=run.id)).state == \
            rpb.RUN_STATE_RUNNING

        deleted = stubs.runs.DeleteRun(rpb.DeleteRunRequest(run_id=run.id, cancel=True),
                                       timeout=120)
        assert deleted.run_id == run.id
        # The phase 1 job was killed and removed, so its data volume went with the run.
        assert names["data/train"] in deleted.removed
        assert not exists(docker_client, names["data/train"])
        assert leftover_containers(docker_client, namespace) == []
        assert code_of(lambda: stubs.runs.GetRun(
            rpb.GetRunRequest(run_id=run.id))) == grpc.StatusCode.NOT_FOUND


@pytest.mark.docker
def test_deleting_the_last_run_of_a_task_with_requirements_frees_its_image(
        tmp_path: Path, sandbox_image: str, docker_client: docker.DockerClient,
        namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from controller.sandbox import task_image
    from controller.sandbox.task_image import WheelSource, ensure_task_image
    from tests.wheel_files import make_wheel

    monkeypatch.setattr(task_image, "CACHE_DIR", tmp_path / "cache")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "bileveldelpkg", "1.0", {
        "bileveldelpkg/__init__.py": f"def loss(x):\n    return (x - 1.5) ** 2\n"
                                     f"# {uuid.uuid4().hex}\n"})  # an image of its own
    built = ensure_task_image(docker_client, sandbox_image, ["bileveldelpkg==1.0"],
                              WheelSource(find_links=(wheels,), no_index=True))
    task = tmp_path / "task"
    task.mkdir()
    (task / "train.py").write_text(
        "import json\nimport bileveldelpkg\n\nX = 3.0\n\n"
        "print(json.dumps({'loss': bileveldelpkg.loss(X)}))\n")
    (task / "bilevel-task.toml").write_text(
        'name = "tiny-req"\neditable = "train.py"\nmetric = "loss"\ndirection = "minimize"\n'
        'requirements = ["bileveldelpkg==1.0"]\n'
        '[train]\ncommand = ["python3", "train.py"]\nwall_seconds = 60\n'
        '[knobs]\nX = {low = -5.0, high = 5.0}\n')
    mine = namespace_tag(built, namespace, store_scope(tmp_path / "state"))
    with serving(tmp_path / "state", sandbox_image, namespace=namespace) as server:
        stubs = Stubs(server.address)
        wait_for_engine(stubs)
        runs = [stubs.runs.CreateRun(rpb.CreateRunRequest(
            task=rpb.TaskSpec(task_files=read_task_dir(task)),
            budgets=rpb.Budgets(max_trials=1)), timeout=120) for _ in range(2)]
        for run in runs:
            trials = trials_of(stubs, run.id)
            assert all(t.status != rpb.TRIAL_STATUS_CRASH for t in trials), trials
        assert sorted(docker_client.images.get(built).tags) == sorted([built, mine])
        first = stubs.runs.DeleteRun(rpb.DeleteRunRequest(run_id=runs[0].id))
        assert mine not in first.removed  # the other run still uses it
        assert server.server.janitor.sweep().removed == []  # type: ignore[union-attr]
        last = stubs.runs.DeleteRun(rpb.DeleteRunRequest(run_id=runs[1].id))
        assert sorted(last.removed) == sorted([built, mine])
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(built)


# The disk budget.


def test_create_run_past_the_disk_budget_is_resource_exhausted_naming_it(
        tmp_path: Path) -> None:
    root = write_task(tmp_path / "task")
    (root / "data" / "train" / "big.bin").write_bytes(os.urandom(3 << 20))
    state = tmp_path / "state"
    with serving(state, None, docker_url="unix:///nonexistent/docker.sock",
                 state_dir_max_bytes=2 << 20) as server:
        stubs = Stubs(server.address)
        with pytest.raises(grpc.RpcError) as err:
            stubs.runs.CreateRun(task_request(read_task_dir(root), trials=1), timeout=60)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        message = err.value.details() or ""
        assert "server.state_dir_max_bytes" in message and "2097152 bytes" in message
        assert " uses " in message and " adds " in message
        status = rpc_status.from_call(err.value)
        assert status is not None
        quota = error_details_pb2.QuotaFailure()
        assert status.details[0].Unpack(quota)
        assert quota.violations[0].subject == "server.state_dir_max_bytes"
    assert not (state / "runs").exists() or not any((state / "runs").rglob("*.bin"))


# `bilevel delete` without --server, on a state dir no controller holds.


def test_cli_delete_on_the_local_state_dir(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "bilevel.sqlite3")
    store.create_run("run-00000000000a", {})
    store.finish_run("run-00000000000a", RunState.SUCCEEDED, "done", "done", {})
    store.create_run("run-00000000000b", {})  # left running by a controller that stopped
    store.close()
    task_bundle.store(tmp_path / "runs", "run-00000000000a", {"train.py": b"X = 1\n"})
    local = ("--state-dir", str(tmp_path), "--docker-url", "unix:///nonexistent/docker.sock")

    refused = bilevel("delete", "run-00000000000b", *local)
    assert refused.returncode == 2 and "cancel it first" in refused.stderr
    missing = bilevel("delete", "run-0000000000zz", *local)
    assert missing.returncode == 2 and "NOT_FOUND" in missing.stderr

    done = bilevel("delete", "run-00000000000a", *local)
    assert done.returncode == 0, done.stderr
    assert "run-00000000000a: deleted (" in done.stdout
    assert not (tmp_path / "runs" / "run-00000000000a").exists()
    cancelled = bilevel("delete", "--cancel", "run-00000000000b", *local)
    assert cancelled.returncode == 0, cancelled.stderr
    listed = bilevel("runs", *local)
    assert listed.returncode == 0 and "run-0000000000" not in listed.stdout
