"""The deployment recipes: one sandbox recipe for two bases, a compose file that
validates in both variants, and a GPU Dockerfile that builds here up to its CUDA step."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import docker
import pytest

from controller.sandbox import image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deploy"))
import prepare  # noqa: E402

TAIL_START = "COPY --from=packages /opt/venv /opt/venv"


def _final_stage(path: Path) -> list[str]:
    lines = [line for line in path.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return lines[lines.index(TAIL_START):]


def test_the_gpu_image_has_the_cpu_images_final_stage_line_for_line() -> None:
    """Runner, mechanism host, trainer, user and entry point cannot drift apart: change
    sandbox_image/Dockerfile's final stage, and Dockerfile.gpu must follow."""
    assert _final_stage(REPO / "Dockerfile.gpu") == _final_stage(
        REPO / "sandbox_image" / "Dockerfile")


def test_the_gpu_image_takes_base_and_torch_as_build_arguments() -> None:
    text = (REPO / "Dockerfile.gpu").read_text()
    for arg in ("ARG BASE=nvidia/cuda:", "ARG TORCH_VERSION=", "ARG TORCH_INDEX_URL="):
        assert arg in text
    assert "ENTRYPOINT []" in text  # the CUDA banner script must not wrap the runner
    assert "NVIDIA_VISIBLE_DEVICES=void" in text


def test_the_staged_cpu_context_is_what_bilevel_image_build_sends(tmp_path: Path) -> None:
    """Same bytes, so the engine's build cache serves compose and `bilevel image build`
    alike (and the content-hash tag and the compose tag name the same image)."""
    recipe = image.ImageRecipe()
    expected = {}
    with tarfile.open(fileobj=image.build_context(recipe, image.wheelhouse_for(recipe))) as tar:
        for member in tar.getmembers():
            if member.isfile():
                handle = tar.extractfile(member)
                assert handle is not None
                expected[member.name] = handle.read()
    staged = prepare.stage_sandbox_cpu(tmp_path)
    found = {str(p.relative_to(staged)): p.read_bytes()
             for p in staged.rglob("*") if p.is_file()}
    assert found == expected


def test_the_staged_gpu_context_has_the_same_sources(tmp_path: Path) -> None:
    staged = prepare.stage_sandbox_gpu(tmp_path, python="3.11")
    for name, path in image.source_files():
        assert (staged / name).read_bytes() == path.read_bytes()
    assert (staged / "Dockerfile").read_bytes() == (REPO / "Dockerfile.gpu").read_bytes()
    requirements = (staged / "wheelhouse" / "requirements.txt").read_text().split()
    assert requirements and not any(r.startswith("torch") for r in requirements)


def _compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        pytest.fail("docker-compose is not installed: apt-get install docker-compose "
                    "(see README#deploy)")
    return found


@pytest.mark.docker
@pytest.mark.parametrize("files", [["docker-compose.yml"],
                                   ["docker-compose.yml", "docker-compose.cpu.yml"]])
def test_the_compose_files_validate(files: list[str], tmp_path: Path) -> None:
    for context in ("sandbox-gpu", "sandbox-cpu", "controller"):
        (tmp_path / context).mkdir()  # compose checks that build contexts exist
    env = {**os.environ, "DOCKER_GID": "0", "BILEVEL_SECRETS": str(tmp_path),
           "BILEVEL_BUILD": str(tmp_path),
           "COMPOSE_FILE": ":".join(str(REPO / f) for f in files)}
    done = subprocess.run([_compose(), "config", "-q"], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.docker
def test_compose_refuses_to_start_without_the_prepared_settings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_GID"}
    done = subprocess.run([_compose(), "-f", str(REPO / "docker-compose.yml"), "config"],
                          cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert "run deploy/prepare.py" in done.stderr


@pytest.mark.docker
def test_the_gpu_dockerfile_builds_up_to_its_cuda_step_on_a_local_base(
        tmp_path: Path, docker_client: docker.DockerClient) -> None:
    """No CUDA base or PyTorch index here: substitute the local Debian base and build
    the stages before the CUDA-specific one (Python, venv, the wheelhouse)."""
    base = image.resolve_base(docker_client, os.environ.get("BILEVEL_BASE", "auto"))
    context = prepare.stage_sandbox_gpu(tmp_path, python="3.11")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(context, arcname=".")
    buffer.seek(0)
    tag = "bilevel-test-gpu-deps:latest"
    docker_client.images.build(fileobj=buffer, custom_context=True, tag=tag, target="deps",
                               buildargs={"BASE": base}, network_mode="none", rm=True,
                               forcerm=True)
    try:
        out = docker_client.containers.run(
            tag, ["/opt/venv/bin/python", "-c", "import numpy, os; print("
                  "os.environ['NVIDIA_VISIBLE_DEVICES'], numpy.__version__)"],
            remove=True, network_disabled=True)
        assert out.decode().split()[0] == "void"
        assert docker_client.images.get(tag).attrs["Config"]["Entrypoint"] in (None, [])
    finally:
        docker_client.images.remove(tag, force=True)
