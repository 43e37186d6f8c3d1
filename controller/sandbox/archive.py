"""Tar archives in and out of a job's volume.

In: the job's files and job.json, root-owned, for the runner to copy. Out: only
regular files with safe relative paths, within a byte budget. Links, devices,
absolute paths and `..` are refused, because what a job returns is untrusted.
"""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
import time
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from controller.sandbox.hardening import SANDBOX_UID


def _info(name: str, *, size: int = 0, directory: bool = False,
          uid: int = SANDBOX_UID) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.uid = info.gid = uid
    info.mtime = int(time.time())
    if directory:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    else:
        info.size = size
        info.mode = 0o644
    return info


def pack_job(files: dict[str, bytes], job: dict[str, Any], go: bool = False) -> bytes:
    """A tar to extract at the runner's /bilevel: in/<files> and job.json, root-owned
    (the job cannot change them; the runner copies in/ to the job's /job/work). With
    `go`, an empty `go` file last: a pooled runner, waiting, starts once it exists, and
    the engine extracts in order, so everything before it is complete by then."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        dirs = {"in"}
        for path in files:
            parent = posixpath.dirname(path)
            while parent:
                dirs.add(f"in/{parent}")
                parent = posixpath.dirname(parent)
        for directory in sorted(dirs):
            tar.addfile(_info(directory, directory=True, uid=0))
        for path, data in sorted(files.items()):
            tar.addfile(_info(f"in/{path}", size=len(data), uid=0), io.BytesIO(data))
        payload = json.dumps(job).encode()
        tar.addfile(_info("job.json", size=len(payload), uid=0), io.BytesIO(payload))
        if go:
            tar.addfile(_info("go", size=0, uid=0), io.BytesIO(b""))
    return buffer.getvalue()


MAX_NAMED_REFUSALS = 20  # refused entries listed by name; the rest are counted
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


@dataclass
class Unpacked:
    files: dict[str, bytes] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    over_budget: bool = False


class _ChunkReader(io.RawIOBase):
    """File-like view over the chunk iterator docker's get_archive returns."""

    def __init__(self, chunks: Iterable[bytes], max_bytes: int) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._buffer = memoryview(b"")
        self._offset = 0
        self.read_total = 0
        self._max = max_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        # An offset into the current chunk, not a slice of it: slicing copies the rest
        # of a (2 MiB) chunk on every small read.
        while self._offset >= len(self._buffer):
            try:
                self._buffer, self._offset = memoryview(next(self._chunks)), 0
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer) - self._offset)
        target[:size] = self._buffer[self._offset:self._offset + size]
        self._offset += size
        self.read_total += size
        if self.read_total > self._max:
            raise OverflowError("archive larger than its budget")
        return size


def unpack_returned(chunks: Iterable[bytes], *, root: str, max_bytes: int) -> Unpacked:
    """Read the regular files of a get_archive stream of `root` (e.g. "out/").

    Linear in the archive: one pass, a running byte count. Refused entries are listed
    with their names escaped, at most MAX_NAMED_REFUSALS of them."""
    result = Unpacked()
    used = 0
    refused = 0
    # Tar headers and padding add overhead; the content budget is enforced per file.
    reader = _ChunkReader(chunks, max_bytes + (1 << 20) + max_bytes // 8)
    try:
        with tarfile.open(fileobj=io.BufferedReader(reader), mode="r|") as tar:
            for member in tar:
                name = posixpath.normpath(member.name)
                if name == root.rstrip("/"):
                    continue
                inside = name.startswith(root.rstrip("/") + "/")
                rel = name[len(root.rstrip("/")) + 1:] if inside else name
                if member.isdir():
                    continue
                why = ""
                if (not member.isfile() or not inside or member.name.startswith("/")
                        or ".." in member.name.split("/")):
                    why = _kind(member)
                elif unsafe_name(rel):
                    why = "name has control, format or non-UTF-8 characters"
                elif used - len(result.files.get(rel, b"")) + member.size > max_bytes:
                    result.over_budget = True
                    why = "over the returned-file budget"
                if why:
                    refused += 1
                    if refused <= MAX_NAMED_REFUSALS:
                        result.refused.append(f"{escaped(member.name)} ({why})")
                    continue
                handle = tar.extractfile(member)
                if handle is not None:
                    used -= len(result.files.get(rel, b""))
                    result.files[rel] = handle.read()
                    used += len(result.files[rel])
    except OverflowError:
        result.over_budget = True
    except tarfile.TarError as exc:  # a truncated or corrupt stream: keep what was read
        result.refused.append(f"the rest of the archive ({escaped(str(exc))})")
    if refused > MAX_NAMED_REFUSALS:
        result.refused.append(f"and {refused - MAX_NAMED_REFUSALS} more")
    return result


def escaped(text: str, limit: int = 200) -> str:
    """`text` as printable ASCII (Python escapes, no quotes), cut at `limit`."""
    return ascii(text)[1:-1][:limit]


def unsafe_name(name: str) -> bool:
    """True for a path a person could be misled by or a client could not take: control
    characters (newlines, escapes), Unicode format characters (bidi overrides,
    zero-width), line separators, and undecodable bytes (surrogate escapes)."""
    if name.isascii():
        return not name.isprintable()
    return any(unicodedata.category(ch) in _UNSAFE_CATEGORIES for ch in name)


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"symlink to {escaped(member.linkname)}"
    if member.islnk():
        return f"hard link to {escaped(member.linkname)}"
    if member.isfile():
        return "path outside the output folder"
    return "not a regular file"


def read_single(chunks: Iterable[bytes], max_bytes: int) -> bytes | None:
    """The content of the one regular file in a get_archive stream, if small enough."""
    reader = _ChunkReader(chunks, max_bytes + (64 << 10))
    try:
        with tarfile.open(fileobj=io.BufferedReader(reader), mode="r|") as tar:
            for member in tar:
                if member.isfile() and member.size <= max_bytes:
                    handle = tar.extractfile(member)
                    return handle.read() if handle else None
    except (OverflowError, tarfile.TarError):
        return None
    return None
