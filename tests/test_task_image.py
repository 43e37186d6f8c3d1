"""Task images on the real engine: a task's requirements installed on the sandbox image
from a host wheelhouse (no network: the wheels come from a local folder here), tagged by
a hash of the inputs and reused; a wheel that would plant an interpreter start-up hook
is refused."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.models.images import ImageCollection

from controller import cli
from controller.sandbox import task_image
from controller.sandbox.executor import SandboxExecutor
from controller.sandbox.image import ImageBuildError
from controller.sandbox.spec import JobSpec, Limits, Status
from controller.sandbox.task_image import WheelSource, check_requirements, ensure_task_image
from tests.conftest import RUNTIMES


def make_wheel(folder: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """A pure-Python wheel written by hand (what `pip wheel` would make of `files`)."""
    dist = f"{name}-{version}.dist-info"
    contents = dict(files)
    contents[f"{dist}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    contents[f"{dist}/WHEEL"] = ("Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                 "Tag: py3-none-any\n")
    record = []
    for path, text in contents.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    contents[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in contents.items():  # fixed times: the same bytes every run
            zf.writestr(zipfile.ZipInfo(path, date_time=(2026, 1, 1, 0, 0, 0)), text)
    return wheel


def test_requirements_are_names_not_options_or_urls() -> None:
    assert check_requirements(["scikit-learn>=1.5", "six==1.17.0"]) == (
        "scikit-learn>=1.5", "six==1.17.0")
    for bad, words in ((["--index-url=http://127.0.0.1/x"], "requirements[0]"),
                       (["ok", "pkg @ https://127.0.0.1/p.whl"], "requirements[1]: a URL"),
                       (["not a requirement!"], "requirements[0]"),
                       ([""], "requirements[0]: must be a non-empty string"),
                       ([3], "requirements[0]")):
        with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
            check_requirements(bad)


@pytest.mark.docker
def test_task_image_built_from_local_wheels_reused_and_used_by_jobs(
        docker_client: docker.DockerClient, sandbox_image: str, executor: SandboxExecutor,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(task_image, "CACHE_DIR", tmp_path / "cache")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "bileveltinypkg", "1.0", {
        "bileveltinypkg/__init__.py": "VALUE = 'tiny-1.0'\n"})
    source = WheelSource(find_links=(wheels,), no_index=True)

    tag = ensure_task_image(docker_client, sandbox_image, ["bileveltinypkg==1.0"], source)
    assert tag.startswith("bilevel-task:") and tag != sandbox_image
    first_id = docker_client.images.get(tag).id
    assert docker_client.images.get(tag).labels[task_image.LABEL] == sandbox_image

    # Built again only when missing: the same inputs give the same tag without a build.
    builds: list[Any] = []
    real_build = ImageCollection.build

    def counting_build(self: ImageCollection, **kw: Any) -> Any:
        builds.append(kw)
        return real_build(self, **kw)
    monkeypatch.setattr(ImageCollection, "build", counting_build)
    assert ensure_task_image(docker_client, sandbox_image, ["bileveltinypkg==1.0"],
                             source) == tag
    assert builds == [] and docker_client.images.get(tag).id == first_id
    docker_client.images.remove(tag, force=True)
    assert ensure_task_image(docker_client, sandbox_image, ["bileveltinypkg==1.0"],
                             source) == tag
    assert len(builds) == 1

    # Other wheel bytes, other tag; no requirements, the sandbox image itself.
    hashes = task_image.wheel_hashes(next((tmp_path / "cache").iterdir()))
    assert task_image.task_image_tag("base", ["bileveltinypkg==1.0"], hashes) != \
        task_image.task_image_tag("base", ["bileveltinypkg==1.0"],
                                  [(hashes[0][0], "0" * 64)])
    assert ensure_task_image(docker_client, sandbox_image, [], source) == sandbox_image

    # Another wheel source on the same host (here: one that has nothing) uses the wheels
    # already chosen here instead of asking an index.
    assert ensure_task_image(docker_client, sandbox_image, ["bileveltinypkg==1.0"],
                             WheelSource(no_index=True)) == tag
    assert len(builds) == 1

    # `bilevel image build --task DIR` prints the task image's tag.
    task = tmp_path / "task"
    task.mkdir()
    (task / "train.py").write_text("X = 1\n")
    (task / "bilevel-task.toml").write_text(
        'name = "tiny"\neditable = "train.py"\nmetric = "m"\ndirection = "minimize"\n'
        'requirements = ["bileveltinypkg==1.0"]\n[train]\ncommand = ["python3", "train.py"]\n')
    monkeypatch.setenv("BILEVEL_BASE", os.environ.get("BILEVEL_BASE", "auto"))
    base = os.environ["BILEVEL_BASE"]
    assert cli.main(["image", "build", "--base", base, "--task", str(task),
                     "--find-links", str(wheels), "--no-index"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == tag

    # A job in the task image imports the package, under both runtimes; the sandbox
    # image's own packages are still there.
    executor.allow_image(tag)
    for runtime in RUNTIMES:
        result = executor.run(JobSpec(
            files={"main.py": b"import bileveltinypkg, numpy\nprint(bileveltinypkg.VALUE)\n"},
            command=("python3", "main.py"), runtime=runtime, image=tag,
            limits=Limits(wall_seconds=60)))
        assert result.status is Status.OK, (runtime, result.detail, result.stderr)
        assert "tiny-1.0" in result.stdout


def hook_wheel(tmp_path: Path) -> WheelSource:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "bilevelhookpkg", "1.0", {
        "bilevelhookpkg/__init__.py": "",
        "zz_hook.pth": "import os; os.environ['HOOKED'] = 'ran at start-up'\n"})
    return WheelSource(find_links=(wheels,), no_index=True)


@pytest.mark.docker
def test_deny_task_wheel_start_up_hook_refused(
        docker_client: docker.DockerClient, sandbox_image: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A .pth file runs at every interpreter start, the root runner's and the trusted
    scorer's included: a requirement that ships one does not become an image."""
    monkeypatch.setattr(task_image, "CACHE_DIR", tmp_path / "cache")
    with pytest.raises(ImageBuildError, match=r"new start-up hooks \[.*zz_hook\.pth"):
        ensure_task_image(docker_client, sandbox_image, ["bilevelhookpkg==1.0"],
                          hook_wheel(tmp_path))


@pytest.mark.docker
def test_sensitivity_task_wheel_start_up_hook_runs_without_the_check(
        docker_client: docker.DockerClient, sandbox_image: str, executor: SandboxExecutor,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The twin: with the build's base check off, the same wheel becomes an image and its
    hook runs in every Python of a job, before any of the job's code."""
    monkeypatch.setattr(task_image, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(task_image, "_CHECK_BASE", False)
    tag = ensure_task_image(docker_client, sandbox_image, ["bilevelhookpkg==1.0"],
                            hook_wheel(tmp_path))
    try:
        executor.allow_image(tag)
        result = executor.run(JobSpec(
            files={"main.py": b"import os\nprint(os.environ.get('HOOKED'))\n"},
            command=("python3", "main.py"), image=tag, limits=Limits(wall_seconds=60)))
        assert result.status is Status.OK, result.detail
        assert "ran at start-up" in result.stdout
    finally:
        docker_client.images.remove(tag, force=True)


@pytest.mark.docker
def test_run_of_a_task_with_requirements_uses_its_image(
        docker_client: docker.DockerClient, sandbox_image: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A task whose train.py imports its requirement runs over the API: its jobs ran in
    the task image (the sandbox image has no such package). The image was built ahead
    (`bilevel image build --task` does this), so the server needs no index."""
    from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
    from controller.store.task_bundle import read_task_dir
    from tests.test_api_harness import Stubs, serving, wait_for_engine

    monkeypatch.setattr(task_image, "CACHE_DIR", tmp_path / "cache")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "bileveltinypkg", "1.0", {
        "bileveltinypkg/__init__.py": "def loss(x):\n    return (x - 1.5) ** 2\n"})
    ensure_task_image(docker_client, sandbox_image, ["bileveltinypkg==1.0"],
                      WheelSource(find_links=(wheels,), no_index=True))
    task = tmp_path / "task"
    task.mkdir()
    (task / "train.py").write_text(
        "import json\nimport bileveltinypkg\n\nX = 3.0\n\n"
        "print(json.dumps({'loss': bileveltinypkg.loss(X)}))\n")
    (task / "bilevel-task.toml").write_text(
        'name = "tiny-req"\neditable = "train.py"\nmetric = "loss"\ndirection = "minimize"\n'
        'requirements = ["bileveltinypkg==1.0"]\n'
        '[train]\ncommand = ["python3", "train.py"]\nwall_seconds = 60\n'
        '[knobs]\nX = {low = -5.0, high = 5.0}\n')
    with serving(tmp_path / "state", sandbox_image) as server:
        stubs = Stubs(server.address)
        wait_for_engine(stubs)
        run = stubs.runs.CreateRun(rpb.CreateRunRequest(
            task=rpb.TaskSpec(task_files=read_task_dir(task)),
            budgets=rpb.Budgets(max_trials=1)), timeout=120)
        events = list(stubs.runs.WatchRun(rpb.WatchRunRequest(run_id=run.id), timeout=300))
    trials = [e.trial_finished for e in events if e.HasField("trial_finished")]
    baseline = next(t for t in trials if t.trial == 0)
    assert baseline.status != rpb.TRIAL_STATUS_CRASH, baseline
    assert json.loads(baseline.metrics_json)["loss"] == pytest.approx(2.25)
