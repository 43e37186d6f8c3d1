"""Say why a task's requirements could not be had, in the task's terms, from pip's
output: which pinned package of the sandbox image a requirement conflicts with, and
which requirement no wheel was found for (and who needed it). pip's own lines only when
neither is recognised."""

from __future__ import annotations

import re
from collections.abc import Sequence

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from controller.sandbox.pinned import Pins

_DEPENDS = re.compile(r"^\s*(\S+) (\S+) depends on (.+?)\s*$")
_CONSTRAINT = re.compile(r"The user requested \(constraint\) (\S+?)==(\S+)")
_NOT_FOUND = re.compile(r"Could not find a version that satisfies the requirement (.+?)"
                        r"(?: \(from ([^)]*)\))? \(from versions: ([^)]*)\)")
_NO_MATCH = re.compile(r"No matching distribution found for (.+?)\s*$")
TAIL_LINES = 15


def _requirement(spec: str) -> Requirement | None:
    try:
        return Requirement(spec)
    except InvalidRequirement:
        return None


def _pin_conflicts(lines: Sequence[str], pins: Pins) -> list[str]:
    """'needsold 1.0 needs numpy<2, but numpy is pinned to 2.4.6 in the sandbox image'."""
    constrained = {canonicalize_name(m.group(1)) for line in lines
                   if (m := _CONSTRAINT.search(line))}
    out: list[str] = []
    for line in lines:
        match = _DEPENDS.match(line)
        if not match:
            continue
        package, version, dep = match.groups()
        req = _requirement(dep)
        pinned = pins.get(req.name) if req is not None else None
        if req is None or pinned is None or req.specifier.contains(pinned[1], prereleases=True):
            continue  # not a pin, or one the pin satisfies: not this conflict
        name = req.name
        if constrained and canonicalize_name(name) not in constrained:
            continue
        text = f"{package} {version} needs {dep}, but {pins.describe(name)}"
        if text not in out:
            out.append(text)
    return out


def _missing(lines: Sequence[str], where: str) -> list[str]:
    """'scipy>=1.6 (needed by needsscipy) could not be had from ...'."""
    out: list[str] = []
    for line in lines:
        match = _NOT_FOUND.search(line)
        if match:
            spec, needed_by, versions = match.groups()
            by = f" (needed by {needed_by})" if needed_by else ""
            seen = versions.strip() or "none"
            out.append(f"{spec}{by} could not be had from {where}: no binary wheel for "
                       f"CPython 3.11 on Linux x86_64 (versions seen: {seen})")
    if not out:
        out = [f"{m.group(1)} could not be had from {where}"
               for line in lines if (m := _NO_MATCH.search(line))]
    return out


def explain(output: str, pins: Pins, where: str) -> str:
    """One message for a failed `pip download` (or install) of a task's requirements;
    `where` names the wheel source ("the package index", "--find-links ... only")."""
    lines = output.splitlines()
    conflicts = _pin_conflicts(lines, pins)
    if conflicts:
        return ("the task's requirements conflict with the sandbox image, whose packages "
                "keep their versions: " + "; ".join(conflicts)
                + ". Ask for a version that accepts the pinned one (or drop the "
                "requirement)")
    missing = _missing(lines, where)
    if missing:
        return "; ".join(missing)
    tail = "\n".join(line for line in lines[-TAIL_LINES:] if line.strip())
    return f"pip could not resolve the task's requirements:\n{tail}"
