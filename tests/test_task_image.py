"""Task images on the real engine: a task's requirements installed on the sandbox image
from a host wheelhouse (no network: the wheels come from a local folder here), tagged by
a hash of the inputs and reused. A wheel that would plant an interpreter start-up hook
or shadow a command is refused by the static check of the wheels before any build; each
`test_sensitivity_*` twin shows the comparison of the install with its base refusing the
same wheel on its own, and the attack working in a job when neither check runs (the
build's lower steps, composed here)."""

from __future__ import annotations

import io
import json
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from controller import cli
from controller.sandbox import task_image
from controller.sandbox.backend import SandboxBackend
from controller.sandbox.image import ImageBuildError
from controller.sandbox.install_rules import BaseLayout
from controller.sandbox.spec import JobSpec, Limits, Status
from controller.sandbox.task_image import (
    WheelSource,
    base_freeze,
    base_layout,
    build_task_image,
    check_requirements,
    commit_task_image,
    download_wheelhouse,
    ensure_task_image,
    install_container,
)
from tests.conftest import RUNTIMES
from tests.wheel_files import make_wheel, unchecked_pyc

HIDDEN_PTH = "bilevelhookpkg-1.0.data/data/lib/python3/dist-packages/zz_hook.pth"
# The attack: a .pth in a Debian-only site dir of the venv, which hides that
# dir from sys.path once it has run.
HOOK_LINE = ("import os, sys; os.environ['HOOKED'] = 'hook ran as uid %d' % os.getuid(); "
             "sys.path[:] = [p for p in sys.path if 'python3/dist-packages' not in p]\n")
SHOW_HOOK = (b"import os, sys\nprint('HOOKED =', os.environ.get('HOOKED'))\n"
             b"print('hidden dir on sys.path:', any('python3/dist-packages' in p "
             b"for p in sys.path))\n")
SITECUSTOMIZE_PYC = "bilevelhookpkg-1.0.data/purelib/sitecustomize.pyc"
SHADOW_SCRIPT = "bilevelhookpkg-1.0.data/scripts/python3"
SHADOW = ('#!/bin/sh\necho "shadow python3 ran as uid $(id -u), pid $$" >&2\n'
          'exec /usr/bin/python3 "$@"\n')


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
        docker_client: docker.DockerClient, sandbox_image: str, executor: SandboxBackend,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """An honest wheel (a pure package with a console script) passes both checks, and
    jobs import it and run its script."""
    monkeypatch.setattr(task_image, "CACHE_DIR", tmp_path / "cache")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "bileveltinypkg", "1.0", {
        "bileveltinypkg/__init__.py": "VALUE = 'tiny-1.0'\n\ndef main():\n    print(VALUE)\n"},
        entry_points="[console_scripts]\nbilevel-tiny = bileveltinypkg:main\n")
    source = WheelSource(find_links=(wheels,), no_index=True)

    tag = ensure_task_image(docker_client, sandbox_image, ["bileveltinypkg==1.0"], source)
    assert tag.startswith("bilevel-task:") and tag != sandbox_image
    first_id = docker_client.images.get(tag).id
    assert docker_client.images.get(tag).labels == {
        **docker_client.images.get(sandbox_image).labels, task_image.LABEL: sandbox_image}

    # Built again only when missing: the same inputs give the same tag without a build.
    builds: list[Any] = []

    def counting_build(*args: Any) -> None:
        builds.append(args)
        build_task_image(*args)
    monkeypatch.setattr(task_image, "build_task_image", counting_build)
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
        result = executor.run_job(JobSpec(
            files={"main.py": b"import bileveltinypkg, numpy\nprint(bileveltinypkg.VALUE)\n",
                   "run.sh": b"python3 main.py && bilevel-tiny\n"},
            command=("sh", "run.sh"), runtime=runtime, image=tag,
            limits=Limits(wall_seconds=60)))
        assert result.status is Status.OK, (runtime, result.detail, result.stderr)
        assert result.stdout.count("tiny-1.0") == 2, result.stdout


@pytest.fixture(scope="module")
def base_facts(docker_client: docker.DockerClient,
               sandbox_image: str) -> tuple[list[str], BaseLayout]:
    """The sandbox image's packages and layout, as ensure_task_image reads them."""
    return base_freeze(docker_client, sandbox_image), base_layout(docker_client, sandbox_image)


@pytest.fixture(scope="module")
def public_like_base(docker_client: docker.DockerClient, sandbox_image: str) -> Iterator[str]:
    """The sandbox image as on the default public base (python:3.11-slim-bookworm), whose
    standard library has no sitecustomize: Debian's /usr/lib/python3.11 one removed."""
    tag = f"bilevel-test-nositecustomize:{sandbox_image.split(':')[1]}"
    dockerfile = (f"FROM {sandbox_image}\nUSER root\n"
                  "RUN rm /usr/lib/python3.11/sitecustomize.py\nUSER 0:0\n")
    docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True,
                               network_mode="none")
    yield tag
    docker_client.images.remove(tag, force=True)


def hook_source(tmp_path: Path, files: dict[str, str | bytes]) -> WheelSource:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "bilevelhookpkg", "1.0", {"bilevelhookpkg/__init__.py": "", **files},
               modes={SHADOW_SCRIPT: stat.S_IFREG | 0o755})
    return WheelSource(find_links=(wheels,), no_index=True)


def hook_wheelhouse(tmp_path: Path, files: dict[str, str | bytes],
                    constraints: list[str]) -> Path:
    """The wheelhouse ensure_task_image would download for the hostile wheel."""
    return download_wheelhouse(("bilevelhookpkg==1.0",), constraints,
                               hook_source(tmp_path, files), uuid.uuid4().hex[:16])


@pytest.fixture
def test_tag(docker_client: docker.DockerClient) -> Iterator[str]:
    """A tag for an image built from the build's lower steps; removed afterwards, and no
    install container may be left behind."""
    tag = f"bilevel-test-task:{uuid.uuid4().hex[:12]}"
    yield tag
    left = docker_client.containers.list(all=True, filters={
        "name": f"{task_image.INSTALL_NAME}-{tag.rpartition(':')[2]}-"})
    for image in docker_client.images.list(name=tag):
        docker_client.images.remove(image.id, force=True)
    assert left == []


def unchecked_image(client: docker.DockerClient, base: str, wheelhouse: Path,
                    tag: str) -> None:
    """What a plain install would make of the wheelhouse: neither check runs."""
    container = install_container(client, base, wheelhouse, tag)
    try:
        commit_task_image(client, container, base, tag)
    finally:
        container.remove(force=True)


def job_output(executor: SandboxBackend, tag: str, main: bytes,
               command: tuple[str, ...] = ("python3", "main.py")) -> str:
    executor.allow_image(tag)
    result = executor.run_job(JobSpec(files={"main.py": main}, command=command, image=tag,
                                  limits=Limits(wall_seconds=60)))
    assert result.status is Status.OK, (result.detail, result.stderr)
    return result.stdout + result.stderr


def refused_before_any_build(client: docker.DockerClient, base: str, source: WheelSource,
                             words: str, monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[Any] = []
    monkeypatch.setattr(task_image, "build_task_image", lambda *a: builds.append(a))
    with pytest.raises(ImageBuildError, match=words):
        ensure_task_image(client, base, ["bilevelhookpkg==1.0"], source)
    assert builds == []


@pytest.mark.docker
def test_deny_wheel_with_pth_in_a_hidden_site_dir_refused_before_any_build(
        docker_client: docker.DockerClient, sandbox_image: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's attack through `requirements`: a .pth installed into a Debian-only
    site dir of the venv (/opt/venv/lib/python3/dist-packages), which the interpreter
    processes at every start and which hides that dir from sys.path. The static check
    names the wheel and the member; nothing is built."""
    monkeypatch.setattr(task_image, "CACHE_DIR", tmp_path / "cache")
    refused_before_any_build(
        docker_client, sandbox_image, hook_source(tmp_path, {HIDDEN_PTH: HOOK_LINE}),
        rf"bilevelhookpkg-1\.0-py3-none-any\.whl: member '{HIDDEN_PTH}' is a \.pth file",
        monkeypatch)


@pytest.mark.docker
def test_sensitivity_hidden_pth_refused_by_the_image_comparison_alone(
        docker_client: docker.DockerClient, sandbox_image: str,
        base_facts: tuple[list[str], BaseLayout], tmp_path: Path, test_tag: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the static check, the comparison of the install with its base refuses the
    same wheel on its own (the paths it added are outside site-packages), before any
    image exists."""
    monkeypatch.setattr(task_image, "CACHE_DIR", tmp_path / "cache")
    constraints, layout = base_facts
    wheelhouse = hook_wheelhouse(tmp_path, {HIDDEN_PTH: HOOK_LINE}, constraints)
    with pytest.raises(ImageBuildError, match=(
            r"/opt/venv/lib/python3/dist-packages is outside site-packages.*"
            r"/opt/venv/lib/python3/dist-packages/zz_hook\.pth is a \.pth file")):
        build_task_image(docker_client, sandbox_image, wheelhouse, test_tag, layout)
    assert docker_client.images.list(name=test_tag) == []


@pytest.mark.docker
def test_sensitivity_hidden_pth_runs_in_jobs_with_neither_check(
        docker_client: docker.DockerClient, sandbox_image: str, executor: SandboxBackend,
        base_facts: tuple[list[str], BaseLayout], tmp_path: Path, test_tag: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The twin of that twin: installed without either check, the hook runs in every
    Python of a job, before the job's code, and is gone from sys.path."""
    monkeypatch.setattr(task_image, "CACHE_DIR", tmp_path / "cache")
    wheelhouse = hook_wheelhouse(tmp_path, {HIDDEN_PTH: HOOK_LINE}, base_facts[0])
    unchecked_image(docker_client, sandbox_image, wheelhouse, test_tag)
    output = job_output(executor, test_tag, SHOW_HOOK)
    assert "HOOKED = hook ran as uid 10001" in output, output
    assert "hidden dir on sys.path: False" in output, output


@pytest.mark.docker
@pytest.mark.parametrize("member", [
    "sitecustomize.cpython-311-x86_64-linux-gnu.so", SITECUSTOMIZE_PYC,
    "sitecustomize/__init__.py", "__pycache__/sitecustomize.cpython-311.pyc"])
def test_deny_sitecustomize_in_any_form_refused_before_any_build(
        docker_client: docker.DockerClient, sandbox_image: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, member: str) -> None:
    """A sitecustomize module in site-packages (extension module, sourceless bytecode,
    package, cached bytecode) would run at start-up in place of the trusted one."""
    monkeypatch.setattr(task_image, "CACHE_DIR", tmp_path / "cache")
    refused_before_any_build(
        docker_client, sandbox_image, hook_source(tmp_path, {member: b"\0"}),
        rf"member '{member}' is a sitecustomize module", monkeypatch)


@pytest.mark.docker
def test_sensitivity_sitecustomize_pyc_refused_by_the_image_comparison_alone(
        docker_client: docker.DockerClient, public_like_base: str,
        base_facts: tuple[list[str], BaseLayout], tmp_path: Path, test_tag: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(task_image, "CACHE_DIR", tmp_path / "cache")
    layout = base_layout(docker_client, public_like_base)
    wheelhouse = hook_wheelhouse(tmp_path, {SITECUSTOMIZE_PYC: b"\0"}, base_facts[0])
    with pytest.raises(ImageBuildError, match=r"site-packages/sitecustomize\.pyc is a "
                                              r"sitecustomize module"):
        build_task_image(docker_client, public_like_base, wheelhouse, test_tag, layout)


@pytest.mark.docker
def test_sensitivity_sitecustomize_pyc_runs_in_jobs_with_neither_check(
        docker_client: docker.DockerClient, public_like_base: str, executor: SandboxBackend,
        base_facts: tuple[list[str], BaseLayout], tmp_path: Path, test_tag: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a base whose standard library has no sitecustomize, sourceless bytecode in
    site-packages is found before the image's own (/opt/bilevel/lib comes later on
    sys.path) and runs at start-up instead of it, in any Python that does not put the
    job's hook folder first (here `python3 -I`). Debian's python3 (the local base)
    imports its own from the standard library, ahead of site-packages."""
    monkeypatch.setattr(task_image, "CACHE_DIR", tmp_path / "cache")
    pyc = unchecked_pyc("import os; os.environ['HOOKED'] = 'sitecustomize from a wheel'\n")
    wheelhouse = hook_wheelhouse(tmp_path, {SITECUSTOMIZE_PYC: pyc}, base_facts[0])
    unchecked_image(docker_client, public_like_base, wheelhouse, test_tag)
    output = job_output(executor, test_tag, SHOW_HOOK + b"import sitecustomize\n"
                        b"print('sitecustomize from', sitecustomize.__file__)\n",
                        ("python3", "-I", "main.py"))
    assert "HOOKED = sitecustomize from a wheel" in output, output
    assert "sitecustomize from /opt/venv/lib/python3.11/site-packages/sitecustomize.pyc" \
        in output, output


@pytest.mark.docker
def test_deny_script_shadowing_python3_refused_before_any_build(
        docker_client: docker.DockerClient, sandbox_image: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A script named python3 would replace the venv's interpreter link, which the root
    runner (PID 1) and every job start."""
    monkeypatch.setattr(task_image, "CACHE_DIR", tmp_path / "cache")
    refused_before_any_build(
        docker_client, sandbox_image, hook_source(tmp_path, {SHADOW_SCRIPT: SHADOW}),
        rf"member '{SHADOW_SCRIPT}' shadows the command 'python3'", monkeypatch)


@pytest.mark.docker
def test_sensitivity_python3_shadow_refused_by_the_image_comparison_alone(
        docker_client: docker.DockerClient, sandbox_image: str,
        base_facts: tuple[list[str], BaseLayout], tmp_path: Path, test_tag: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(task_image, "CACHE_DIR", tmp_path / "cache")
    constraints, layout = base_facts
    wheelhouse = hook_wheelhouse(tmp_path, {SHADOW_SCRIPT: SHADOW}, constraints)
    with pytest.raises(ImageBuildError, match=r"/opt/venv/bin/python3 is changed \(the "
                                              r"sandbox image's link 777 is now file 755\)"):
        build_task_image(docker_client, sandbox_image, wheelhouse, test_tag, layout)


@pytest.mark.docker
def test_sensitivity_python3_shadow_runs_as_the_root_runner_with_neither_check(
        docker_client: docker.DockerClient, sandbox_image: str, executor: SandboxBackend,
        base_facts: tuple[list[str], BaseLayout], tmp_path: Path, test_tag: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed without either check, the wheel's script is the runner's interpreter:
    it runs as PID 1 and root, and again for the job's own python3."""
    monkeypatch.setattr(task_image, "CACHE_DIR", tmp_path / "cache")
    wheelhouse = hook_wheelhouse(tmp_path, {SHADOW_SCRIPT: SHADOW}, base_facts[0])
    unchecked_image(docker_client, sandbox_image, wheelhouse, test_tag)
    output = job_output(executor, test_tag, b"print('job ran')\n")
    assert "shadow python3 ran as uid 0, pid 1" in output, output
    assert "shadow python3 ran as uid 10001" in output and "job ran" in output, output


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
