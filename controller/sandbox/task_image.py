"""Task images: a task's `requirements` installed on top of the sandbox image.

The wheels are downloaded on the host (`pip download`, binary wheels only, so no package
code runs there), copied into the build context and installed with `pip install
--no-index`: the build itself has no network. The tag is a hash of the base image's id,
the requirements and every wheel's sha256, so an image is reused exactly while its inputs
are unchanged. Every package the sandbox image already has is pinned to its version
there (a constraints file from the base's `pip freeze`), and the build fails if an
install changed any file of the base's venv or trusted code, or added an interpreter
start-up hook (.pth, sitecustomize): the runner and the trusted scorer run that Python.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import structlog
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from controller.sandbox.image import CACHE_DIR, ImageBuildError

log = structlog.get_logger(__name__)
_BUILDING = threading.Lock()  # one task-image build at a time in this process
_FREEZES: dict[str, list[str]] = {}  # base image id -> its `pip freeze`

TASK_IMAGE_REPO = "bilevel-task"
MAX_REQUIREMENTS = 64
MAX_REQUIREMENT_CHARS = 200
MAX_WHEELHOUSE_BYTES = 2 << 30  # what one task may add to the sandbox image
LABEL = "dev.bilevel.task-image"  # value: the base image it was built on

# Runs in the build, before and after the install: records (size, mtime, mode) of every
# file of the base's venv and trusted code, then refuses any change to them and any new
# interpreter start-up hook on sys.path. pip writes every file it installs anew (it sets
# no times), so a file an install overwrote or replaced has a new mtime.
_CHECK_SCRIPT = r'''
import json, os, sys, sysconfig
ROOTS = ("/opt/venv", "/opt/bilevel")
RECORD = "/tmp/task-wheelhouse-base.json"
def files():
    out = {}
    for root in ROOTS:
        for d, _, names in os.walk(root):
            for n in names:
                p = os.path.join(d, n)
                if "__pycache__" not in p:
                    st = os.lstat(p)
                    out[p] = [st.st_size, st.st_mtime_ns, st.st_mode]
    return out
def hooks():
    dirs = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")} | set(sys.path)
    found = set()
    for d in dirs:
        if os.path.isdir(d):
            for n in os.listdir(d):
                if n.endswith(".pth") or n.split(".")[0] in ("sitecustomize", "usercustomize"):
                    found.add(os.path.join(d, n))
    return sorted(found)
if sys.argv[1] == "before":
    with open(RECORD, "w") as f:
        json.dump({"files": files(), "hooks": hooks()}, f)
else:
    with open(RECORD) as f:
        base = json.load(f)
    now = files()
    changed = sorted(p for p, h in base["files"].items() if now.get(p) != h)
    new_hooks = sorted(set(hooks()) - set(base["hooks"]))
    if changed or new_hooks:
        print("task requirements may not change the sandbox image: changed "
              f"{changed[:10]}, new start-up hooks {new_hooks[:10]}", file=sys.stderr)
        sys.exit(1)
    os.unlink(RECORD)
'''

_DOCKERFILE = """\
ARG BASE
FROM ${BASE}
COPY check_base.py /tmp/check_base.py
COPY wheelhouse /tmp/task-wheelhouse
RUN /opt/venv/bin/python /tmp/check_base.py before \\
 && /opt/venv/bin/pip install --no-cache-dir --no-index --no-compile \\
        --find-links /tmp/task-wheelhouse -c /tmp/task-wheelhouse/constraints.txt \\
        -r /tmp/task-wheelhouse/requirements.txt \\
 && /opt/venv/bin/python /tmp/check_base.py after \\
 && rm -rf /tmp/task-wheelhouse /tmp/check_base.py
"""
# Test-only switch (the sensitivity twin in tests/test_task_image.py): False builds
# without the base check, as a plain `pip install` would. Never set from configuration.
_CHECK_BASE = True


def _dockerfile() -> str:
    if _CHECK_BASE:
        return _DOCKERFILE
    return _DOCKERFILE.replace("/opt/venv/bin/python /tmp/check_base.py before", "true") \
        .replace("/opt/venv/bin/python /tmp/check_base.py after", "true")


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
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(partial),
           "--only-binary=:all:", "--python-version", "3.11", *source.args(),
           "-c", str(partial / "constraints.txt"), *requirements]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise ImageBuildError(f"pip download of the task's requirements failed: "
                              f"{done.stderr[-2000:]}")
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


def wheel_hashes(wheelhouse: Path) -> list[tuple[str, str]]:
    return [(w.name, hashlib.sha256(w.read_bytes()).hexdigest())
            for w in sorted(wheelhouse.glob("*.whl"))]


def task_image_tag(base_id: str, requirements: Sequence[str],
                   hashes: Sequence[tuple[str, str]]) -> str:
    digest = hashlib.sha256()
    digest.update(_dockerfile().encode() + _CHECK_SCRIPT.encode() + base_id.encode() + b"\0")
    digest.update("\n".join(requirements).encode() + b"\0")
    for name, sha in hashes:
        digest.update(f"{name}\0{sha}\0".encode())
    return f"{TASK_IMAGE_REPO}:{digest.hexdigest()[:16]}"


def _context(wheelhouse: Path) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in (("Dockerfile", _dockerfile()), ("check_base.py", _CHECK_SCRIPT)):
            info = tarfile.TarInfo(name)
            info.size = len(data.encode())
            tar.addfile(info, io.BytesIO(data.encode()))
        tar.add(wheelhouse, arcname="wheelhouse")
    buffer.seek(0)
    return buffer


def ensure_task_image(client: docker.DockerClient, base: str,
                      requirements: Sequence[str], source: WheelSource | None = None,
                      *, force: bool = False) -> str:
    """The tag of `base` with `requirements` installed, built only when missing. No
    requirements: `base` itself. Raises ImageBuildError (ValueError for a bad entry)."""
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
        if base_id not in _FREEZES:
            _FREEZES[base_id] = base_freeze(client, base)
        return _ensure(client, base, base_id, requirements, _FREEZES[base_id], source, force)


def _ensure(client: docker.DockerClient, base: str, base_id: str,
            requirements: tuple[str, ...], constraints: list[str], source: WheelSource,
            force: bool) -> str:
    """ensure_task_image once the base and its packages are known."""
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
            return tag
        except docker.errors.ImageNotFound:
            pass
    log.info("building task image", tag=tag, base=base, requirements=list(requirements))
    try:
        client.images.build(fileobj=_context(wheelhouse), custom_context=True, tag=tag,
                            rm=True, forcerm=True, buildargs={"BASE": base},
                            network_mode="none", labels={LABEL: base})
    except docker.errors.BuildError as exc:
        tail = "".join(str(c.get("stream", c.get("error", ""))) for c in exc.build_log)[-3000:]
        raise ImageBuildError(f"docker build of {tag} failed: {exc.msg}\n{tail}") from exc
    return tag
