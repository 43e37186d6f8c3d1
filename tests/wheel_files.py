"""Wheels written by hand for the task-image tests: what `pip wheel` would make of a file
map, plus the hostile shapes (odd names, link or setuid modes) a real tool never writes."""

from __future__ import annotations

import base64
import hashlib
import stat
import zipfile
from collections.abc import Mapping
from pathlib import Path


def make_wheel(folder: Path, name: str, version: str, files: Mapping[str, str | bytes], *,
               entry_points: str | None = None, modes: Mapping[str, int] | None = None,
               tag: str = "py3-none-any", requires: tuple[str, ...] = ()) -> Path:
    """A wheel of `files` (path in the wheel -> content) with its .dist-info; `modes` sets
    a member's Unix mode (file type included) in the zip; `requires` its dependencies."""
    dist = f"{name}-{version}.dist-info"
    contents: dict[str, bytes] = {
        path: data.encode() if isinstance(data, str) else data for path, data in files.items()}
    contents[f"{dist}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode()
    contents[f"{dist}/WHEEL"] = (f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: "
                                 f"true\nTag: {tag}\n").encode()
    if entry_points is not None:
        contents[f"{dist}/entry_points.txt"] = entry_points.encode()
    record = []
    for path, data in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    contents[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = folder / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in contents.items():  # fixed times: the same bytes every run
            info = zipfile.ZipInfo(path, date_time=(2026, 1, 1, 0, 0, 0))
            mode = (modes or {}).get(path, stat.S_IFREG | 0o644)
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return wheel


def unchecked_pyc(source: str) -> bytes:
    """Bytecode of `source` that this Python's import uses without any source file (an
    unchecked hash-based .pyc, PEP 552), as a wheel may ship it."""
    import importlib.util
    import marshal

    code = compile(source, "<wheel>", "exec")
    flags = (0b01).to_bytes(4, "little")  # hash-based, unchecked
    return importlib.util.MAGIC_NUMBER + flags + b"\0" * 8 + marshal.dumps(code)
