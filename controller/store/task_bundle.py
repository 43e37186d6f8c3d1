"""A task directory as bytes: read by the client, checked by the server, stored with
the run.

CreateRun carries the whole directory (data folders included) as `path -> bytes`. The
server checks every path as it checks Execute's files (relative, no '..'), refuses
paths that would collide on disk, and bounds the count, the depth and the total size;
it stores the bundle under the run's artifact folder (runs/<run_id>/task/) and records
its hash in the run's settings, so a resumed run loads exactly what was sent, or fails
saying the stored copy changed.

Identical bundles are stored once: the bytes live in runs/.tasks/<sha256>/ and each
run's task/ folder holds hard links to them, so the file system counts the runs that
use a copy (a file's link count) and frees it when the last run's folder and the
shared copy are removed (`release_unused`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import shutil
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path

import structlog

from controller.errors import FieldError
from controller.sandbox.spec import SpecError, check_relative_path

log = structlog.get_logger(__name__)

FIELD = "task.task_files"
MAX_BUNDLE_BYTES = 64 << 20  # files and data folders together
MAX_BUNDLE_FILES = 10_000
MAX_PATH_CHARS = 1024
MAX_DEPTH = 16
SKIPPED_DIRS = ("__pycache__", ".git")  # never sent: caches and history, not the task
SHARED_DIR = ".tasks"  # under the artifacts root: one copy per distinct bundle
_SHARED_LOCK = threading.Lock()  # storing and releasing shared copies, in this process


class BundleError(FieldError):
    """A task bundle (or the directory it is read from) breaks a rule; `field` names the
    file when one is at fault."""


def check_bundle(files: Mapping[str, bytes]) -> dict[str, bytes]:
    """The bundle with normalized paths; BundleError names the first bad file."""
    if not files:
        raise BundleError(FIELD, "is empty: send the task directory's files")
    if len(files) > MAX_BUNDLE_FILES:
        raise BundleError(FIELD, f"holds {len(files)} files, over the cap of "
                                 f"{MAX_BUNDLE_FILES}")
    total = sum(len(data) for data in files.values())
    if total > MAX_BUNDLE_BYTES:
        raise BundleError(FIELD, f"holds {total} bytes, over the cap of {MAX_BUNDLE_BYTES} "
                                 "(data folders included)")
    out: dict[str, bytes] = {}
    for path, data in files.items():
        field = f"{FIELD}[{path[:200]!r}]"
        try:
            norm = check_relative_path(field, path)
        except SpecError as exc:
            raise BundleError(exc.field, exc.reason) from None
        if norm != path or "\0" in path or "\\" in path or len(path) > MAX_PATH_CHARS:
            raise BundleError(field, "must be a plain relative path (no '.', '//', '\\' or "
                                     f"NUL; at most {MAX_PATH_CHARS} characters)")
        parts = path.split("/")
        if len(parts) > MAX_DEPTH or any(len(p.encode()) > 255 for p in parts):
            raise BundleError(field, f"is deeper than {MAX_DEPTH} folders or has a name "
                                     "over 255 bytes")
        if any(p in SKIPPED_DIRS for p in parts[:-1]):
            raise BundleError(field, f"lies in a {'/'.join(SKIPPED_DIRS)} folder, which a "
                                     "task does not send")
        out[path] = data
    names = set(out)
    for path in out:
        parent = posixpath.dirname(path)
        while parent:
            if parent in names:
                raise BundleError(f"{FIELD}[{parent!r}]", f"is a file, and {path!r} needs "
                                                          "it to be a folder")
            parent = posixpath.dirname(parent)
    return out


def digest(files: Mapping[str, bytes]) -> str:
    """sha256 over (path, bytes) in path order: what a stored task is checked against."""
    h = hashlib.sha256()
    for path in sorted(files):
        data = files[path]
        h.update(len(path).to_bytes(8, "big") + path.encode())
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


def read_task_dir(root: Path) -> dict[str, bytes]:
    """The client's side: every file of a task directory (data folders included), within
    the caps the server applies. A symlink is refused: the server could not store it and
    a task holds none."""
    if not root.is_dir():
        raise BundleError("task", f"{root} is not a directory")
    files: dict[str, bytes] = {}
    total = 0
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        for name in sorted(names + [d for d in dirs if (Path(folder) / d).is_symlink()]):
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                raise BundleError("task", f"{rel} is a symlink; a task holds none")
            if not path.is_file():
                raise BundleError("task", f"{rel} is not a regular file")
            total += path.stat().st_size
            if len(files) >= MAX_BUNDLE_FILES or total > MAX_BUNDLE_BYTES:
                raise BundleError("task", f"{root} is over the caps a server accepts: "
                                          f"{MAX_BUNDLE_FILES} files, {MAX_BUNDLE_BYTES} bytes")
            files[rel] = path.read_bytes()
    return check_bundle(files)


def task_dir(artifacts_root: Path, run_id: str) -> Path:
    return artifacts_root / run_id / "task"


def _shared(artifacts_root: Path, sha256: str) -> Path:
    return artifacts_root / SHARED_DIR / sha256


def added_bytes(artifacts_root: Path, files: Mapping[str, bytes]) -> int:
    """What storing `files` would add to the state dir: nothing when a copy is shared."""
    if _shared(artifacts_root, digest(files)).is_dir():
        return 0
    return sum(len(data) for data in files.values())


def _write_tree(folder: Path, files: Mapping[str, bytes]) -> None:
    for path, data in files.items():
        dest = folder / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        dest.chmod(0o444)


def _holds(folder: Path, files: Mapping[str, bytes]) -> bool:
    """Whether the shared copy still holds exactly `files` (nobody edited it)."""
    try:
        return all((folder / path).read_bytes() == data for path, data in files.items()) \
            and sum(1 for p in folder.rglob("*") if p.is_file()) == len(files)
    except OSError:
        return False


def _share(artifacts_root: Path, files: Mapping[str, bytes]) -> Path:
    """The shared copy of `files`, written unless an intact one exists."""
    shared = _shared(artifacts_root, digest(files))
    if shared.is_dir() and _holds(shared, files):
        return shared
    # Edited (or cut short) copy: runs that link to it keep their links; new runs get a
    # fresh copy.
    shutil.rmtree(shared, ignore_errors=True)
    staging = shared.parent / f".staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        _write_tree(staging, files)
        staging.rename(shared)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return shared


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError as exc:  # a file system without hard links: a copy per run
        log.warning("cannot hard-link a stored task file; copying it", error=str(exc))
        shutil.copyfile(source, dest)
        dest.chmod(0o444)


def store(artifacts_root: Path, run_id: str, files: Mapping[str, bytes]) -> Path:
    """Place a checked bundle in the run's task folder (complete or not at all), files
    read-only, as links to the bundle's shared copy; returns the folder."""
    files = check_bundle(files)
    target = task_dir(artifacts_root, run_id)
    staging = target.parent / f".task-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        with _SHARED_LOCK:
            shared = _share(artifacts_root, files)
            for path in files:
                dest = staging / path
                dest.parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(shared / path, dest)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def remove(artifacts_root: Path, run_id: str) -> None:
    """Drop a run's stored bundle (a CreateRun that failed after storing it), and the
    shared copy when no other run links to it."""
    folder = task_dir(artifacts_root, run_id)
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):  # the run's folder, unless it holds more
        folder.parent.rmdir()
    release_unused(artifacts_root)


def release_unused(artifacts_root: Path) -> int:
    """Remove the shared copies no run's task folder links to; returns the bytes freed."""
    freed = 0
    root = artifacts_root / SHARED_DIR
    if not root.is_dir():
        return 0
    with _SHARED_LOCK:
        for shared in sorted(root.iterdir()):
            files = [p for p in shared.rglob("*") if p.is_file()] if shared.is_dir() else []
            if any(p.stat().st_nlink > 1 for p in files):
                continue
            freed += sum(p.stat().st_blocks * 512 for p in files)
            if shared.is_dir():
                shutil.rmtree(shared, ignore_errors=True)
            else:
                shared.unlink(missing_ok=True)
    return freed


def load_stored(artifacts_root: Path, run_id: str, expected: str) -> Path:
    """The run's stored task folder, after checking it still hashes to `expected`."""
    folder = task_dir(artifacts_root, run_id)
    if not folder.is_dir():
        raise BundleError(FIELD, f"run {run_id}'s stored task is missing ({folder})")
    found = digest(read_task_dir(folder))
    if found != expected:
        raise BundleError(FIELD, f"run {run_id}'s stored task changed since the run was "
                                 f"created (sha256 {found[:12]}, expected {expected[:12]})")
    return folder
