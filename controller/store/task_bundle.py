"""A task directory as bytes: read by the client, checked by the server, stored with
the run.

CreateRun carries the whole directory (data folders included) as `path -> bytes`. The
server checks every path as it checks Execute's files (relative, no '..'), refuses
paths that would collide on disk, and bounds the count, the depth and the total size;
it stores the bundle under the run's artifact folder (runs/<run_id>/task/) and records
its hash in the run's settings, so a resumed run loads exactly what was sent, or fails
saying the stored copy changed.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

from controller.research.errors import FieldError
from controller.sandbox.spec import SpecError, check_relative_path

FIELD = "task.task_files"
MAX_BUNDLE_BYTES = 64 << 20  # files and data folders together
MAX_BUNDLE_FILES = 10_000
MAX_PATH_CHARS = 1024
MAX_DEPTH = 16
SKIPPED_DIRS = ("__pycache__", ".git")  # never sent: caches and history, not the task


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


def store(artifacts_root: Path, run_id: str, files: Mapping[str, bytes]) -> Path:
    """Write a checked bundle to the run's task folder (complete or not at all), files
    read-only; returns the folder."""
    target = task_dir(artifacts_root, run_id)
    staging = target.parent / f".task-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        for path, data in check_bundle(files).items():
            dest = staging / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(dest, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            dest.chmod(0o444)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def remove(artifacts_root: Path, run_id: str) -> None:
    """Drop a stored bundle (a CreateRun that failed after storing it)."""
    shutil.rmtree(task_dir(artifacts_root, run_id), ignore_errors=True)


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
