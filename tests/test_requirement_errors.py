"""A task's requirements against the sandbox image's pinned packages, offline (wheels from
a local folder, no index): a requirement the pin satisfies (`torch`) needs no task image;
one it cannot (`torch<2`) is refused naming the pin; a new package that needs a pinned
one resolves against the pin without the pin's wheel; what could not be had, and which
pin a dependency conflicts with, are named instead of pip's raw output. A build reports
its steps and pip's lines, which `bilevel image build --task` shows."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from controller import cli
from controller.sandbox import build_progress, task_image
from controller.sandbox.image import ImageBuildError
from controller.sandbox.pinned import PinConflict, Pins, split_pinned
from controller.sandbox.task_image import (
    WheelSource,
    base_freeze,
    download_wheelhouse,
    ensure_task_image,
)
from tests.wheel_files import make_wheel

FREEZE = ["numpy==2.4.6", "torch==2.13.0+cpu", "typing_extensions==4.16.0"]


def test_pinned_requirements_satisfied_or_refused_naming_the_pin() -> None:
    pins = Pins.from_freeze(FREEZE)
    todo, notes = split_pinned(["torch", "NumPy>=2", "typing-extensions", "scipy>=1.6"], pins)
    assert todo == ["scipy>=1.6"]
    assert notes[0] == "torch: already in the sandbox image (torch 2.13.0+cpu)"
    assert len(notes) == 3
    # A marker that does not apply, or extras (which may add packages), go to pip.
    assert split_pinned(['torch<2; python_version < "3"', "torch[opt]"], pins)[0] == [
        'torch<2; python_version < "3"', "torch[opt]"]
    with pytest.raises(PinConflict) as refused:
        split_pinned(["scipy", "torch<2"], pins)
    assert str(refused.value) == (
        "requirements[1] 'torch<2': torch is pinned to 2.13.0+cpu in the sandbox image, "
        "which it does not allow; drop it from requirements (torch 2.13.0+cpu is already "
        "there) or allow 2.13.0+cpu")


@pytest.fixture(scope="module")
def freeze(docker_client: docker.DockerClient, sandbox_image: str) -> list[str]:
    return base_freeze(docker_client, sandbox_image)


@pytest.fixture
def wheels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A local wheel folder (the only source: no index) and a fresh wheel cache."""
    monkeypatch.setattr(task_image, "CACHE_DIR", tmp_path / "cache")
    folder = tmp_path / "wheels"
    folder.mkdir()
    make_wheel(folder, "bilevelneedsnumpy", "1.0", {
        "bilevelneedsnumpy/__init__.py": "import numpy\nVALUE = int(numpy.int64(7))\n"},
        requires=("numpy>=2",))
    make_wheel(folder, "bilevelneedsold", "1.0", {"bilevelneedsold/__init__.py": ""},
               requires=("numpy<2",))
    make_wheel(folder, "bilevelneedsscipy", "1.0", {"bilevelneedsscipy/__init__.py": ""},
               requires=("scipy>=1.6",))
    yield folder


def download(reqs: list[str], freeze: list[str], folder: Path, key: str) -> Path:
    return download_wheelhouse(reqs, freeze, WheelSource(find_links=(folder,), no_index=True),
                               key)


@pytest.mark.docker
def test_new_package_needing_a_pinned_one_resolves_against_the_pin(
        freeze: list[str], wheels: Path) -> None:
    house = download(["bilevelneedsnumpy==1.0"], freeze, wheels, "needsnumpy")
    assert sorted(w.name for w in house.glob("*.whl")) == [
        "bilevelneedsnumpy-1.0-py3-none-any.whl"]


@pytest.mark.docker
def test_sensitivity_without_the_pins_wheels_an_unrelated_numpy_error(
        freeze: list[str], wheels: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's failure: with no index, the new package's numpy dependency cannot be
    had, although the image has numpy."""
    monkeypatch.setattr(task_image, "write_pin_wheels", lambda pins, folder: None)
    with pytest.raises(ImageBuildError, match=r"conflicting dependencies") as failed:
        download(["bilevelneedsnumpy==1.0"], freeze, wheels, "needsnumpy-nopins")
    assert "numpy==2.4.6" in str(failed.value)


@pytest.mark.docker
def test_conflict_with_a_pin_and_a_missing_package_are_named(
        freeze: list[str], wheels: Path) -> None:
    with pytest.raises(ImageBuildError) as conflict:
        download(["bilevelneedsold==1.0"], freeze, wheels, "old")
    assert str(conflict.value).startswith(
        "the task's requirements conflict with the sandbox image, whose packages keep their "
        "versions: bilevelneedsold 1.0 needs numpy<2, but numpy is pinned to 2.4.6 in the "
        "sandbox image.")
    assert "ResolutionImpossible" not in str(conflict.value)
    with pytest.raises(ImageBuildError) as missing:
        download(["bilevelneedsscipy==1.0"], freeze, wheels, "scipy")
    assert str(missing.value).startswith(
        f"scipy>=1.6 (needed by bilevelneedsscipy) could not be had from the wheel folders "
        f"{wheels} only (no index): no binary wheel for CPython 3.11")
    with pytest.raises(ImageBuildError, match=r"^scikit-learn could not be had from"):
        download(["scikit-learn"], freeze, wheels, "sklearn")


@pytest.mark.docker
def test_torch_requirement_uses_the_sandbox_image_itself(
        docker_client: docker.DockerClient, sandbox_image: str, wheels: Path) -> None:
    lines: list[str] = []
    source = WheelSource(find_links=(wheels,), no_index=True)
    with build_progress.listening(lines.append):
        assert ensure_task_image(docker_client, sandbox_image, ["torch", "numpy>=2"],
                                 source) == sandbox_image
        with pytest.raises(PinConflict, match=r"torch is pinned to 2\.13\.0\+cpu in the "
                                              r"sandbox image"):
            ensure_task_image(docker_client, sandbox_image, ["torch<2"], source)
    assert "torch: already in the sandbox image (torch 2.13.0+cpu)" in lines


@pytest.mark.docker
def test_image_build_shows_the_steps_and_pips_lines(
        docker_client: docker.DockerClient, sandbox_image: str, wheels: Path,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`bilevel image build --task` (forced: a real build every time) prints what it does
    while it builds, and jobs then import the package with the image's numpy."""
    task = tmp_path / "task"
    task.mkdir()
    (task / "train.py").write_text("X = 1\n")
    (task / "bilevel-task.toml").write_text(
        'name = "needs-numpy"\neditable = "train.py"\nmetric = "m"\ndirection = "minimize"\n'
        'requirements = ["bilevelneedsnumpy==1.0", "torch"]\n'
        '[train]\ncommand = ["python3", "train.py"]\n')
    base = os.environ.get("BILEVEL_BASE", "auto")
    assert cli.main(["image", "build", "--base", base, "--task", str(task), "--force",
                     "--find-links", str(wheels), "--no-index"]) == 0
    captured = capsys.readouterr()
    tag = captured.out.strip().splitlines()[-1]
    assert tag.startswith("bilevel-task:")
    shown = [line for line in captured.err.splitlines() if line.startswith("task image: ")]
    steps = [line.removeprefix("task image: ").split(" ")[0] for line in shown]
    assert "torch: already in the sandbox image (torch 2.13.0+cpu)" in captured.err
    for step in ("downloading", "pip:", "checking", "installing", "install:", "comparing",
                 "committing"):
        assert step in steps, (step, shown)
    assert f"task image: task image {tag} built" in shown
    out = docker_client.containers.run(
        tag, ["python3", "-c", "import bilevelneedsnumpy, numpy; "
              "print(bilevelneedsnumpy.VALUE, numpy.__version__)"],
        network_disabled=True, remove=True, user="10001", cap_drop=["ALL"])
    assert out.decode().split() == ["7", "2.4.6"]
