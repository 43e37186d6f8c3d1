"""What a task's requirements may ask of the packages the sandbox image already pins.

The image keeps its own versions (torch 2.13.0+cpu, numpy, ...): a task image only adds
packages. A requirement of a pinned package that the pin satisfies (`torch`,
`numpy>=2`) needs nothing new and is not downloaded; one that the pin cannot satisfy
(`torch<2`) is refused before pip runs, naming the pin. The host's `pip download` still
resolves the new packages' dependencies on pinned ones: it is given a metadata-only
wheel of each pin (no files, no dependencies), so it never looks for the image's torch
build on an index, and those wheels are dropped with the rest of what the base has.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


class PinConflict(ValueError):
    """A requirement the sandbox image's pinned version does not satisfy."""


@dataclass(frozen=True)
class Pins:
    """The sandbox image's packages: canonical name -> (name as installed, version)."""

    packages: dict[str, tuple[str, str]]

    @classmethod
    def from_freeze(cls, lines: Iterable[str]) -> Pins:
        out: dict[str, tuple[str, str]] = {}
        for line in lines:
            name, sep, version = line.strip().partition("==")
            if sep and name and version:
                out[canonicalize_name(name)] = (name, version)
        return cls(out)

    def get(self, name: str) -> tuple[str, str] | None:
        return self.packages.get(canonicalize_name(name))

    def describe(self, name: str) -> str:
        """'torch is pinned to 2.13.0+cpu in the sandbox image'."""
        shown, version = self.packages[canonicalize_name(name)]
        return f"{shown} is pinned to {version} in the sandbox image"


def split_pinned(requirements: Sequence[str], pins: Pins) -> tuple[list[str], list[str]]:
    """(requirements to download, notes on those the image already satisfies). Raises
    PinConflict naming the pin for a requirement it cannot satisfy."""
    todo: list[str] = []
    notes: list[str] = []
    for i, raw in enumerate(requirements):
        req = Requirement(raw)
        pinned = pins.get(req.name)
        applies = req.marker is None or req.marker.evaluate()
        if pinned is None or not applies or req.extras:
            todo.append(raw)  # pip resolves it (extras may add packages)
            continue
        shown, version = pinned
        if req.specifier.contains(version, prereleases=True):
            notes.append(f"{raw}: already in the sandbox image ({shown} {version})")
            continue
        raise PinConflict(
            f"requirements[{i}] {raw!r}: {pins.describe(req.name)}, which it does not "
            f"allow; drop it from requirements ({shown} {version} is already there) or "
            f"allow {version}")
    return todo, notes


def _wheel_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", name)


def write_pin_wheels(pins: Pins, folder: Path) -> None:
    """A metadata-only wheel `name-version-py3-none-any.whl` for every pin in `folder`:
    what pip download resolves a pinned dependency to (dropped afterwards)."""
    for name, version in pins.packages.values():
        dist = f"{_wheel_name(name)}-{version}.dist-info"
        files = {f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\n"
                                     f"Version: {version}\n".encode(),
                 f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: bilevel\n"
                                  b"Root-Is-Purelib: true\nTag: py3-none-any\n"}
        record = [f"{path},sha256={_digest(data)},{len(data)}" for path, data in files.items()]
        files[f"{dist}/RECORD"] = ("\n".join([*record, f"{dist}/RECORD,,"]) + "\n").encode()
        wheel = folder / f"{_wheel_name(name)}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            for path, data in files.items():
                archive.writestr(path, data)


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
