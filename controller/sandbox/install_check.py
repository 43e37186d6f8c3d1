"""Compare what a task image's install wrote with its base, from the host, before the
image exists: nothing of the new image runs.

The install runs in a container of the base image; once it has stopped, the engine's
diff of that container against the base is exactly the layer a commit would record
(`docker diff`: every added, changed and deleted path, an overlay whiteout or opaque
folder included). Every added path must be one controller/sandbox/install_rules.py
allows, a plain file or folder owned by root without setuid, setgid, sticky or group/other
write bits (read from an archive of each added tree); every changed path must be a
folder whose type and mode are the base's (only its entries changed, read with the
engine's stat of the path in both); nothing may be deleted.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import structlog
from docker.models.containers import Container
from docker.utils import decode_json_header

from controller.sandbox.install_rules import BaseLayout, placement_problem

log = structlog.get_logger(__name__)

MAX_CHANGES = 500_000
MAX_SHOWN = 20
ADDED, CHANGED, DELETED = 1, 0, 2  # the engine's change kinds
_GO_DIR = 1 << 31  # Go's os.ModeDir, in the engine's path stat


@dataclass(frozen=True)
class Change:
    path: str
    kind: int


def changes_of(container: Container) -> list[Change]:
    return [Change(str(c["Path"]), int(c["Kind"])) for c in container.diff() or []]


def placement_problems(changes: Sequence[Change], layout: BaseLayout) -> list[str]:
    """The pure part: deletions, and added paths outside the allow-list."""
    problems: list[str] = []
    for change in changes:
        if change.kind == DELETED:
            problems.append(f"{change.path} is deleted from the sandbox image")
        elif change.kind == ADDED:
            problem = placement_problem(change.path, layout, metadata_ok=True)
            if problem:
                problems.append(f"{change.path} {problem}")
        elif change.kind != CHANGED:
            problems.append(f"{change.path}: unknown change kind {change.kind}")
    return problems


def added_roots(changes: Sequence[Change]) -> list[str]:
    """Added paths whose parent was not added: one archive each covers every addition."""
    added = {c.path for c in changes if c.kind == ADDED}
    return sorted(p for p in added if posixpath.dirname(p) not in added)


def path_stat(client: docker.DockerClient, container_id: str, path: str
              ) -> dict[str, Any] | None:
    """The engine's stat of one path in a container (HEAD of its archive: no content)."""
    url = f"{client.api.base_url}/v{client.api.api_version}/containers/{container_id}/archive"
    response = client.api.head(url, params={"path": path})
    if response.status_code == 404:
        return None
    response.raise_for_status()
    header = response.headers.get("X-Docker-Container-Path-Stat")
    return decode_json_header(header) if header else None


def changed_problems(client: docker.DockerClient, container: Container, base: str,
                     changes: Sequence[Change]) -> list[str]:
    """Every changed path must be a folder whose mode (type included) is the base's."""
    changed = [c.path for c in changes if c.kind == CHANGED]
    if not changed:
        return []
    probe = client.containers.create(base, ["true"], network_disabled=True)  # not started
    try:
        problems = []
        for path in changed:
            was = path_stat(client, probe.id, path)
            now = path_stat(client, container.id, path)
            if was is None or now is None or not int(was["mode"]) & _GO_DIR \
                    or was["mode"] != now["mode"]:
                problems.append(f"{path} is changed (the sandbox image's "
                                f"{_describe(was)} is now {_describe(now)})")
        return problems
    finally:
        probe.remove(force=True)


def _describe(st: dict[str, Any] | None) -> str:
    if st is None:
        return "nothing"
    mode = int(st["mode"])
    kind = "folder" if mode & _GO_DIR else "link" if st.get("linkTarget") else "file"
    return f"{kind} {mode & 0o7777:o}"


class _Stream(io.RawIOBase):
    """A file over the chunks of an engine stream."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._left = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._left:
            self._left = next(self._chunks, b"")
            if not self._left:
                return 0
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


def added_problems(container: Container, changes: Sequence[Change]) -> list[str]:
    """Type, owner and mode of every added path, from an archive of each added tree; the
    archives must hold exactly the paths the diff added."""
    added = {c.path for c in changes if c.kind == ADDED}
    seen: set[str] = set()
    problems: list[str] = []
    for root in added_roots(changes):
        chunks, _ = container.get_archive(root, chunk_size=1 << 20)
        parent = posixpath.dirname(root)
        with tarfile.open(fileobj=io.BufferedReader(_Stream(iter(chunks)), 1 << 20),
                          mode="r|") as tar:
            for member in tar:
                path = posixpath.join(parent, member.name.rstrip("/"))
                seen.add(path)
                if len(seen) > len(added):
                    return [*problems, f"the archive of {root} holds more than was added"]
                if not (member.isfile() or member.isdir()):
                    problems.append(f"{path} is not a plain file or folder")
                elif member.uid or member.gid or member.mode & 0o7777 & ~0o755:
                    problems.append(f"{path} has owner {member.uid}:{member.gid} and "
                                    f"mode {member.mode & 0o7777:o}, not root's and "
                                    "within 755")
    if seen != added:
        problems.append(f"the diff and the archives disagree on "
                        f"{sorted(seen ^ added)[:MAX_SHOWN]}")
    return problems


def install_problems(client: docker.DockerClient, container: Container, base: str,
                     layout: BaseLayout) -> list[str]:
    """Everything wrong with what the (stopped) install container wrote; [] if nothing."""
    started = time.monotonic()
    changes = changes_of(container)
    if len(changes) > MAX_CHANGES:
        return [f"the install changed {len(changes)} paths, over the cap of {MAX_CHANGES}"]
    problems = [*placement_problems(changes, layout),
                *changed_problems(client, container, base, changes),
                *added_problems(container, changes)]
    log.info("task image install compared with its base", changes=len(changes),
             problems=len(problems), seconds=round(time.monotonic() - started, 2))
    return problems
