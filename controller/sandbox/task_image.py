"""Task images: a task's `requirements` installed on top of the sandbox image.

The wheels are downloaded on the host (`pip download`, binary wheels only, so no package
code runs there) and checked there before anything is built: every member of every
wheel must land where controller/sandbox/install_rules.py allows
(controller/sandbox/wheel_check.py). They are installed by the base's own pip with
`--no-index`, in a container of the base image without network; the engine's diff of
that stopped container against the base must again hold only allowed paths
(controller/sandbox/install_check.py) before it is committed as the task image. No
Python of the new image runs in either check. The tag is a hash of the base image's id,
the requirements, every wheel's sha256 and the checks' own code, so an image is reused
exactly while its inputs are unchanged. Every package the sandbox image already has is
pinned to its version there (a constraints file from the base's `pip freeze`): a
requirement the pin satisfies needs nothing new, one it cannot is refused naming the pin
(controller/sandbox/pinned.py), and pip's failures are told in those terms
(controller/sandbox/pip_errors.py). Each step and pip's lines are reported as progress
(controller/sandbox/build_progress.py).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import requests
import structlog
from docker.models.containers import Container
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from controller.sandbox.build_progress import report
from controller.sandbox.docker_engine import DockerEngine, engine_calls
from controller.sandbox.image import CACHE_DIR, ImageBuildError
from controller.sandbox.install_check import MAX_SHOWN, install_problems
from controller.sandbox.install_rules import PROBE_SCRIPT, BaseLayout
from controller.sandbox.pinned import Pins, split_pinned, write_pin_wheels
from controller.sandbox.pip_errors import explain
from controller.sandbox.wheel_check import check_wheelhouse

log = structlog.get_logger(__name__)
_BUILDING = threading.Lock()  # one task-image build at a time in this process
# base image id -> its `pip freeze` and its layout (both from the trusted base itself)
_BASES: dict[str, tuple[list[str], BaseLayout]] = {}

TASK_IMAGE_REPO = "bilevel-task"
MAX_REQUIREMENTS = 64
MAX_REQUIREMENT_CHARS = 200
MAX_WHEELHOUSE_BYTES = 2 << 30  # what one task may add to the sandbox image
LABEL = "dev.bilevel.task-image"  # value: the base image it was built on
INSTALL_NAME = "bilevel-task-install"  # the install container: <this>-<tag's hash>-<random>
INSTALL_SECONDS = 1800
INSTALL_DIR = "/tmp/task-wheelhouse"
# Run by the base's own Python and pip (-I: no PYTHON* variables, no user site;
# --isolated: no PIP_* variables or user configuration), wheels only, no byte-compiling;
# the wheels leave with the install, so the diff holds only what pip installed.
INSTALL_SCRIPT = (
    f"python3 -I -B -m pip install --isolated --disable-pip-version-check --no-cache-dir "
    f"--no-index --no-compile --only-binary=:all: --find-links {INSTALL_DIR} "
    f"-c {INSTALL_DIR}/constraints.txt -r {INSTALL_DIR}/requirements.txt "
    f"&& rm -rf {INSTALL_DIR}")
# What a commit must keep of the base's configuration (the label is added).
_CONFIG_KEYS = ("Cmd", "Entrypoint", "Env", "User", "WorkingDir", "Volumes",
                "ExposedPorts", "StopSignal", "Shell", "OnBuild", "Healthcheck")
_CHECK_SOURCES = ("install_rules.py", "wheel_check.py", "install_check.py", "task_image.py")
PIP_LINES_KEPT = 400  # of pip's output, for the explanation of a failure


@dataclass(frozen=True)
class WheelSource:
    """Where the host's `pip download` looks: the operator's choice, never a task's.
    Empty: pip's own configuration (PyPI, or the index pip.conf names)."""

    find_links: tuple[Path, ...] = ()
    no_index: bool = False

    def args(self) -> list[str]:
        out = ["--no-index"] if self.no_index else []
        for folder in self.find_links:
            out += ["--find-links", str(folder)]
        return out

    def describe(self) -> str:
        """Where the wheels were looked for, as an error names it."""
        folders = ", ".join(str(f) for f in self.find_links)
        if self.no_index:
            return f"the wheel folders {folders} only (no index)" if folders else \
                "nowhere (no index and no wheel folder)"
        return f"the package index and {folders}" if folders else "the package index"


def check_requirements(requirements: Sequence[object],
                       field: str = "requirements") -> tuple[str, ...]:
    """The requirements as normalized PEP 508 strings; ImageBuildError names the entry.
    Only names with versions and markers: a URL or a pip option would let a task point
    the host's pip anywhere."""
    if len(requirements) > MAX_REQUIREMENTS:
        raise ValueError(f"{field}: at most {MAX_REQUIREMENTS} entries, got "
                         f"{len(requirements)}")
    out: list[str] = []
    for i, raw in enumerate(requirements):
        where = f"{field}[{i}]"
        if not isinstance(raw, str) or not raw.strip():
            raise ValueError(f"{where}: must be a non-empty string")
        if len(raw) > MAX_REQUIREMENT_CHARS or raw.lstrip().startswith("-"):
            raise ValueError(f"{where}: must be a package requirement such as "
                             f"'scikit-learn==1.7.2', got {raw[:80]!r}")
        try:
            req = Requirement(raw)
        except InvalidRequirement as exc:
            raise ValueError(f"{where}: {exc}") from None
        if req.url:
            raise ValueError(f"{where}: a URL requirement is not allowed ({raw!r}); name "
                             "the package and a version")
        out.append(str(req))
    return tuple(out)


def base_freeze(client: docker.DockerClient, base: str) -> list[str]:
    """The base image's installed packages, `name==version` (a hardened one-off run)."""
    try:
        raw = client.containers.run(base, ["/opt/venv/bin/pip", "freeze", "--all"],
                                    network_disabled=True, remove=True, user="10001",
                                    cap_drop=["ALL"], read_only=True, stderr=False)
    except docker.errors.DockerException as exc:
        raise ImageBuildError(f"cannot list the packages of {base}: {exc}") from exc
    lines = raw.decode("utf-8", "replace").splitlines()
    return [line.strip() for line in lines if re.fullmatch(r"[A-Za-z0-9._-]+==\S+", line.strip())]


def base_layout(client: docker.DockerClient, base: str) -> BaseLayout:
    """Where the base installs, imports from and finds commands (a hardened one-off run
    of its own Python)."""
    try:
        raw = client.containers.run(base, ["python3", "-c", PROBE_SCRIPT],
                                    network_disabled=True, remove=True, user="10001",
                                    cap_drop=["ALL"], read_only=True, stderr=False)
        return BaseLayout.from_probe(raw)
    except (docker.errors.DockerException, ValueError, KeyError) as exc:
        raise ImageBuildError(f"cannot read the layout of {base}: {exc}") from exc


def _wheel_project(name: str) -> str:
    return canonicalize_name(name.split("-", 1)[0])


def download_wheelhouse(requirements: Sequence[str], constraints: Sequence[str],
                        source: WheelSource, key: str) -> Path:
    """Download the wheels once per (requirements, constraints, source) on the host.
    Wheels of packages the base already has are dropped: it keeps its own."""
    folder = CACHE_DIR / f"task-wheelhouse-{key}"
    if (folder / "requirements.txt").exists():
        return folder
    # Its own staging folder: another process (a CLI build, a second controller) may be
    # downloading the same set; the first complete one to land wins.
    partial = CACHE_DIR / f".task-wheelhouse-{key}-{uuid.uuid4().hex[:8]}"
    partial.mkdir(parents=True)
    (partial / "constraints.txt").write_text("\n".join(constraints) + "\n")
    pins = Pins.from_freeze(constraints)
    report(f"downloading wheels for {', '.join(requirements)} from {source.describe()}")
    with tempfile.TemporaryDirectory(dir=CACHE_DIR, prefix=".pin-wheels-") as pinned:
        write_pin_wheels(pins, Path(pinned))
        cmd = [sys.executable, "-m", "pip", "download", "--progress-bar", "off",
               "--disable-pip-version-check", "--dest", str(partial), "--only-binary=:all:",
               "--python-version", "3.11", *source.args(), "--find-links", pinned,
               "-c", str(partial / "constraints.txt"), *requirements]
        code, output = _run_reporting(cmd)
    if code != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise ImageBuildError(explain(output, pins, source.describe()))
    present = {canonicalize_name(c.split("==", 1)[0]) for c in constraints}
    total = 0
    for wheel in sorted(partial.glob("*.whl")):
        if _wheel_project(wheel.name) in present:
            wheel.unlink()
        else:
            total += wheel.stat().st_size
    if total > MAX_WHEELHOUSE_BYTES:
        shutil.rmtree(partial, ignore_errors=True)
        raise ImageBuildError(f"the task's wheels take {total} bytes, over the "
                              f"{MAX_WHEELHOUSE_BYTES} byte cap")
    (partial / "requirements.txt").write_text("\n".join(requirements) + "\n")
    try:
        partial.rename(folder)
    except OSError:  # another download landed first: use that one
        shutil.rmtree(partial, ignore_errors=True)
        if not (folder / "requirements.txt").exists():
            raise
    return folder


def _run_reporting(cmd: list[str]) -> tuple[int, str]:
    """Run `cmd`, reporting each line it prints; (exit code, its last lines)."""
    kept: deque[str] = deque(maxlen=PIP_LINES_KEPT)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            kept.append(line.rstrip("\n"))
            report(f"pip: {line.strip()}")
    return proc.returncode, "\n".join(kept)


def wheel_hashes(wheelhouse: Path) -> list[tuple[str, str]]:
    return [(w.name, hashlib.sha256(w.read_bytes()).hexdigest())
            for w in sorted(wheelhouse.glob("*.whl"))]


@functools.cache
def _check_sources() -> bytes:
    here = Path(__file__).parent
    return b"\0".join((here / name).read_bytes() for name in _CHECK_SOURCES)


def task_image_tag(base_id: str, requirements: Sequence[str],
                   hashes: Sequence[tuple[str, str]]) -> str:
    digest = hashlib.sha256()
    digest.update(_check_sources() + INSTALL_SCRIPT.encode() + base_id.encode() + b"\0")
    digest.update("\n".join(requirements).encode() + b"\0")
    for name, sha in hashes:
        digest.update(f"{name}\0{sha}\0".encode())
    return f"{TASK_IMAGE_REPO}:{digest.hexdigest()[:16]}"


def install_name(tag: str) -> str:
    """A name for the install container of `tag` (a name, not a label: a commit would
    copy a label into the image and every job's container)."""
    return f"{INSTALL_NAME}-{tag.rpartition(':')[2]}-{uuid.uuid4().hex[:8]}"


def install_container(client: docker.DockerClient, base: str, wheelhouse: Path,
                      tag: str) -> Container:
    """A stopped container of `base` in which pip installed the wheelhouse (no network,
    no capabilities). The caller removes it."""
    container = client.containers.create(
        base, command=["/bin/sh", "-c", INSTALL_SCRIPT], user="0:0",
        network_disabled=True, cap_drop=["ALL"], security_opt=["no-new-privileges"],
        pids_limit=512, mem_limit="4g", name=install_name(tag))
    try:
        with tempfile.TemporaryFile(dir=wheelhouse.parent) as archive:
            with tarfile.open(fileobj=archive, mode="w") as tar:
                tar.add(wheelhouse, arcname=Path(INSTALL_DIR).name)
            archive.seek(0)
            container.put_archive(str(Path(INSTALL_DIR).parent), archive)
        container.start()
        threading.Thread(target=_report_logs, args=(container,), daemon=True).start()
        code = container.wait(timeout=INSTALL_SECONDS)["StatusCode"]
        if code != 0:
            tail = container.logs(tail=40).decode("utf-8", "replace")[-3000:]
            raise ImageBuildError(f"pip install of the task's wheels for {tag} failed "
                                  f"(exit {code}):\n{tail}")
    except (docker.errors.DockerException, requests.RequestException) as exc:
        container.remove(force=True)
        raise ImageBuildError(f"the install of {tag} failed: {exc}") from exc
    except BaseException:
        container.remove(force=True)
        raise
    return container


def _report_logs(container: Container) -> None:
    """Report the install's output while it runs (ends with the container)."""
    with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
        pending = b""
        for chunk in container.logs(stream=True, follow=True):
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for line in lines:
                report(f"install: {line.decode('utf-8', 'replace').strip()}")


def commit_task_image(client: docker.DockerClient, container: Container, base: str,
                      tag: str) -> None:
    """Record the install container as `tag`: the base's layers and configuration plus
    one layer (what the container wrote) and the task-image label."""
    base_image = client.images.get(base)
    config = dict(base_image.attrs["Config"])
    config["Labels"] = {**(config.get("Labels") or {}), LABEL: base}
    repository, _, name = tag.partition(":")
    container.commit(repository=repository, tag=name, conf=config, pause=False)
    image = client.images.get(tag)
    layers, base_layers = image.attrs["RootFS"]["Layers"], base_image.attrs["RootFS"]["Layers"]
    differ = [k for k in _CONFIG_KEYS if image.attrs["Config"].get(k) != config.get(k)]
    if differ or layers[:-1] != base_layers or len(layers) != len(base_layers) + 1:
        client.images.remove(tag, force=True)
        raise ImageBuildError(f"the commit of {tag} does not keep {base}'s configuration "
                              f"({differ}) and layers")


def build_task_image(client: docker.DockerClient, base: str, wheelhouse: Path,
                     tag: str, layout: BaseLayout) -> None:
    """Install the (statically checked) wheelhouse on `base` and commit it as `tag`,
    unless what the install wrote differs from the base in any way the rules forbid."""
    report(f"installing the wheels in a container of {base} without network")
    container = install_container(client, base, wheelhouse, tag)
    try:
        report("comparing what the install wrote with the sandbox image")
        problems = install_problems(client, container, base, layout)
        if problems:
            raise ImageBuildError(
                f"task image {tag} refused, its install changes the sandbox image: "
                + "; ".join(problems[:MAX_SHOWN])
                + (f"; and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN
                   else ""))
        report(f"committing {tag}")
        commit_task_image(client, container, base, tag)
    finally:
        container.remove(force=True)


def ensure_task_image(client: docker.DockerClient, base: str,
                      requirements: Sequence[str], source: WheelSource | None = None,
                      *, force: bool = False) -> str:
    """The tag of `base` with `requirements` installed, built only when missing. No
    requirements, or only ones its pinned packages satisfy: `base` itself. Raises
    ImageBuildError (ValueError for a bad entry, PinConflict for one a pin refuses)."""
    requirements = check_requirements(requirements)
    if not requirements:
        return base
    source = source or WheelSource()
    try:
        base_id = client.images.get(base).id
    except docker.errors.ImageNotFound as exc:
        raise ImageBuildError(f"base image {base} is not built: run `bilevel image "
                              "build`") from exc
    with _BUILDING:  # two runs of one task starting together build it once
        if base_id not in _BASES:
            report(f"reading the packages and layout of {base}")
            _BASES[base_id] = (base_freeze(client, base), base_layout(client, base))
        constraints, layout = _BASES[base_id]
        todo, notes = split_pinned(requirements, Pins.from_freeze(constraints))
        for note in notes:
            report(note)
        if not todo:
            return base
        return _ensure(client, base, base_id, tuple(todo), constraints, layout, source,
                       force)


def _ensure(client: docker.DockerClient, base: str, base_id: str,
            requirements: tuple[str, ...], constraints: list[str], layout: BaseLayout,
            source: WheelSource, force: bool) -> str:
    """ensure_task_image once the base, its packages and its layout are known."""
    # The wheel source is not part of the key: the wheels one source chose on this host
    # (say `bilevel image build --task` with --find-links) are what a later run here
    # uses, without asking an index again. --force downloads them anew.
    key = hashlib.sha256("\n".join([base_id, *requirements, "--", *constraints]).encode()
                         ).hexdigest()[:16]
    if force:
        shutil.rmtree(CACHE_DIR / f"task-wheelhouse-{key}", ignore_errors=True)
    wheelhouse = download_wheelhouse(requirements, constraints, source, key)
    tag = task_image_tag(base_id, requirements, wheel_hashes(wheelhouse))
    if not force:
        try:
            client.images.get(tag)
            log.info("task image up to date", tag=tag)
            report(f"task image {tag} is up to date")
            return tag
        except docker.errors.ImageNotFound:
            pass
    report(f"checking {len(list(wheelhouse.glob('*.whl')))} wheels before any build")
    check_wheelhouse(wheelhouse, layout)
    log.info("building task image", tag=tag, base=base, requirements=list(requirements))
    build_task_image(client, base, wheelhouse, tag, layout)
    report(f"task image {tag} built")
    return tag


def ensure_local_task_image(base: str, requirements: Sequence[str],
                            source: WheelSource | None = None, *, force: bool = False,
                            docker_url: str | None = None) -> str:
    """ensure_task_image on the engine at `docker_url` (default: from the environment);
    SandboxUnavailable when the engine does not answer or fails."""
    engine = DockerEngine.connect(docker_url, timeout=120)
    try:
        with engine_calls():
            return ensure_task_image(engine.client, base, requirements, source, force=force)
    finally:
        engine.close()
