"""Build the sandbox image, reusing one whose inputs have not changed.

The tag is a hash of everything that goes into the image (recipe, runner, trusted
trainer code, package list, base image id), so a stale image is never used and an
unchanged one is never rebuilt. Without a registry, the base is made from Debian's
archive with debootstrap.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import structlog

from controller.sandbox.docker_engine import DockerEngine, engine_calls

log = structlog.get_logger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPE_DIR = REPO_ROOT / "sandbox_image"
TRUSTED_PACKAGES = ("trainer",)
IMAGE_REPO = "bilevel-sandbox"
LOCAL_BASE_REPO = "bilevel-base"
LOCAL_BASE_SUITE = "bookworm"
LOCAL_BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
# PyYAML: a script that reads a YAML config runs as it is, with no requirements entry.
DEFAULT_REQUIREMENTS = ("torch==2.13.0", "numpy==2.4.6", "PyYAML==6.0.4")
DEFAULT_BASE = "python:3.11-slim-bookworm"
CACHE_DIR = Path(os.environ.get("BILEVEL_CACHE", Path.home() / ".cache" / "bilevel"))


class ImageBuildError(RuntimeError):
    """The image could not be built; the message says which step and how to fix it."""


@dataclass(frozen=True)
class ImageRecipe:
    """Inputs of one sandbox image. `base` is an image reference or "local"/"auto"."""

    base: str = "auto"
    requirements: tuple[str, ...] = DEFAULT_REQUIREMENTS
    pip_args: tuple[str, ...] = ()
    dockerfile: Path = RECIPE_DIR / "Dockerfile"
    repo: str = IMAGE_REPO
    extra_files: dict[str, bytes] = field(default_factory=dict)


def source_files() -> Iterable[tuple[str, Path]]:
    """(name in build context, path) for the runner, the mechanism host, hook and trusted
    packages."""
    yield "runner.py", RECIPE_DIR / "runner.py"
    yield "mechanism_host.py", RECIPE_DIR / "mechanism_host.py"
    for path in sorted((RECIPE_DIR / "hook").rglob("*.py")):
        yield f"hook/{path.relative_to(RECIPE_DIR / 'hook')}", path
    for package in TRUSTED_PACKAGES:
        root = REPO_ROOT / package
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                yield f"lib/{package}/{path.relative_to(root)}", path


def recipe_digest(recipe: ImageRecipe, base_id: str) -> str:
    digest = hashlib.sha256()
    digest.update(recipe.dockerfile.read_bytes())
    digest.update(base_id.encode())
    digest.update("\n".join(recipe.requirements + recipe.pip_args).encode())
    for name, path in source_files():
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    for name, data in sorted(recipe.extra_files.items()):
        digest.update(name.encode() + b"\0" + data + b"\0")
    return digest.hexdigest()[:16]


def _local_base_tag() -> str:
    recipe = f"{LOCAL_BASE_SUITE}:{','.join(LOCAL_BASE_PACKAGES)}"
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    return f"{LOCAL_BASE_REPO}:{LOCAL_BASE_SUITE}-{digest}"


def build_local_base(client: docker.DockerClient) -> str:
    """A minimal Debian image with Python, made with debootstrap; reused when present."""
    tag = _local_base_tag()
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    if shutil.which("debootstrap") is None:
        raise ImageBuildError(
            "no base image and no debootstrap: install it (apt-get install debootstrap) "
            "or pass --base with an image your engine can pull"
        )
    log.info("building local base image with debootstrap", tag=tag)
    with tempfile.TemporaryDirectory(prefix="bilevel-rootfs-") as rootfs:
        cmd = [
            "debootstrap", "--variant=minbase", f"--include={','.join(LOCAL_BASE_PACKAGES)}",
            LOCAL_BASE_SUITE, rootfs, "http://deb.debian.org/debian",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ImageBuildError(f"debootstrap failed ({done.returncode}): {done.stderr[-2000:]}")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(Path(rootfs) / cache, ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        client.api.import_image_from_stream(tar.stdout, repository=tag.split(":")[0],
                                            tag=tag.split(":")[1])
        if tar.wait() != 0:
            raise ImageBuildError("tar of the debootstrap rootfs failed")
    client.images.get(tag)  # raises if the import did not produce it
    return tag


def resolve_base(client: docker.DockerClient, base: str, *, build: bool = True) -> str:
    """Turn "auto"/"local"/an image reference into an image present on the engine.
    With build=False a missing local base raises instead of running debootstrap."""
    if base == "auto":
        try:
            client.images.get(DEFAULT_BASE)
            return DEFAULT_BASE
        except docker.errors.ImageNotFound:
            base = "local"
    if base == "local":
        if build:
            return build_local_base(client)
        tag = _local_base_tag()
        try:
            client.images.get(tag)
        except docker.errors.ImageNotFound as exc:
            raise ImageBuildError(f"base image {tag} is not built") from exc
        return tag
    return base  # docker build pulls it if the engine can reach a registry


def wheelhouse_for(recipe: ImageRecipe) -> Path:
    """Download the wheels once per requirement set, on the host, for Python 3.11."""
    key = hashlib.sha256("\n".join(recipe.requirements + recipe.pip_args).encode()).hexdigest()
    folder = CACHE_DIR / f"wheelhouse-{key[:16]}"
    if (folder / "requirements.txt").exists():
        return folder
    partial = folder.with_suffix(".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(partial),
        "--only-binary=:all:", "--python-version", "3.11", *recipe.pip_args,
        *recipe.requirements,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ImageBuildError(f"pip download failed: {done.stderr[-2000:]}")
    (partial / "requirements.txt").write_text("\n".join(recipe.requirements) + "\n")
    partial.rename(folder)
    return folder


def build_context(recipe: ImageRecipe, wheelhouse: Path) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(recipe.dockerfile, arcname="Dockerfile")
        for name, path in source_files():
            tar.add(path, arcname=name)
        tar.add(wheelhouse, arcname="wheelhouse")
        for name, data in recipe.extra_files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def image_tag(client: docker.DockerClient, recipe: ImageRecipe, *,
              build_base: bool = True) -> tuple[str, str]:
    """(tag the recipe builds to, resolved base). Builds the local base if needed, unless
    `build_base` is False (then a missing local base raises ImageBuildError)."""
    base = resolve_base(client, recipe.base, build=build_base)
    try:
        base_id = client.images.get(base).id
    except docker.errors.ImageNotFound:
        base_id = base
    return f"{recipe.repo}:{recipe_digest(recipe, base_id)}", base


def ensure_image(client: docker.DockerClient, recipe: ImageRecipe | None = None,
                 *, force: bool = False) -> str:
    """Return the tag of an image built from `recipe`, building only if it is missing."""
    recipe = recipe or ImageRecipe()
    tag, base = image_tag(client, recipe)
    if not force:
        try:
            client.images.get(tag)
            log.info("sandbox image up to date", tag=tag)
            return tag
        except docker.errors.ImageNotFound:
            pass
    wheelhouse = wheelhouse_for(recipe)
    log.info("building sandbox image", tag=tag, base=base)
    context = build_context(recipe, wheelhouse)
    try:
        client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True,
                            forcerm=True, buildargs={"BASE": base}, network_mode="none")
    except docker.errors.BuildError as exc:
        tail = "".join(str(c.get("stream", c.get("error", ""))) for c in exc.build_log)[-3000:]
        raise ImageBuildError(f"docker build of {tag} failed: {exc.msg}\n{tail}") from exc
    client.images.get(tag).tag(recipe.repo, "latest")
    return tag


def ensure_local_image(docker_url: str | None = None, recipe: ImageRecipe | None = None,
                       *, force: bool = False) -> str:
    """The tag of `recipe`'s sandbox image (default: this checkout's) on the engine at
    `docker_url` (default: from the environment), built only if missing or `force`;
    SandboxUnavailable when the engine does not answer or fails."""
    engine = DockerEngine.connect(docker_url, timeout=120)
    try:
        with engine_calls():
            return ensure_image(engine.client, recipe, force=force)
    finally:
        engine.close()
