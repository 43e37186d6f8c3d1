"""Static inspection of a task's wheels on the host, before any build: nothing in them
runs. Each wheel is read as a zip whose end record, member count, names, sizes and file
types are bounded before anything else is trusted; every member is mapped to where pip
would install it, and the place must be one controller/sandbox/install_rules.py allows.
Entry points: `console_scripts`/`gui_scripts` become scripts, whose names are checked
like any script's; any other group may not be named after a package of the sandbox
image outside the standard library (`torch.backends`, `networkx.backends`,
`fsspec.specs`, `setuptools.*`): those packages load their plugins, and some run them,
when trusted code imports them.
"""

from __future__ import annotations

import re
import stat
import struct
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from controller.sandbox.image import ImageBuildError
from controller.sandbox.install_rules import (
    ALLOWED,
    BaseLayout,
    hook_problem,
    script_problem,
    site_problem,
    under,
)

WHEELHOUSE_FILES = frozenset({"requirements.txt", "constraints.txt"})
SCRIPT_GROUPS = frozenset({"console_scripts", "gui_scripts"})
# pip installs a console script of these names under other names (pip, pip3, pip3.11).
PIP_RENAMED = re.compile(r"pip(\d+(\.\d+)?)?|easy_install(-\d+(\.\d+)?)?")
NAME_CHARS = re.compile(r"[\x20-\x5b\x5d-\x7e]+")  # printable ASCII without a backslash
_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")


@dataclass(frozen=True)
class WheelCaps:
    """Bounds on what a wheel's zip may declare, checked before it is parsed further."""

    members: int = 100_000
    central_directory_bytes: int = 32 << 20
    name_chars: int = 512
    component_chars: int = 255
    installed_bytes: int = 8 << 30  # uncompressed, all of a task's wheels together
    entry_points_bytes: int = 1 << 20


@dataclass(frozen=True)
class WheelInstall:
    """What one checked wheel installs."""

    wheel: str
    installed_bytes: int


def _refuse(wheel: str, member: str, problem: str) -> ImageBuildError:
    return ImageBuildError(f"task wheel {wheel}: member {member!r} {problem}; {ALLOWED}")


def _directory_extent(path: Path, caps: WheelCaps) -> tuple[int, int]:
    """(entries, central directory bytes) from the end record, found the way zipfile
    finds it: the last 22 bytes, else the last signature in the final 64 KiB; then the
    zip64 record just before it, when a zip64 locator precedes the end record."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        tail_len = min(size, _EOCD.size + (1 << 16))
        fh.seek(size - tail_len)
        tail = fh.read(tail_len)
        at = len(tail) - _EOCD.size
        if at < 0 or tail[at:at + 4] != b"PK\x05\x06" or tail[-2:] != b"\0\0":
            at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < _EOCD.size:
            raise _refuse(path.name, "(end record)", "is missing: not a zip file")
        _, _, _, _, entries, cd_bytes, _, _ = _EOCD.unpack_from(tail, at)
        end_at = size - tail_len + at
        if end_at >= _ZIP64_LOCATOR.size + _ZIP64_EOCD.size:
            fh.seek(end_at - _ZIP64_LOCATOR.size - _ZIP64_EOCD.size)
            record = fh.read(_ZIP64_EOCD.size + _ZIP64_LOCATOR.size)
            if _ZIP64_LOCATOR.unpack_from(record, _ZIP64_EOCD.size)[0] == b"PK\x06\x07":
                sig, *_, entries, cd_bytes, _ = _ZIP64_EOCD.unpack_from(record)
                if sig != b"PK\x06\x06":
                    raise _refuse(path.name, "(zip64 end record)", "is malformed")
    if entries > caps.members:
        raise _refuse(path.name, "(end record)", f"declares {entries} members, over "
                      f"the cap of {caps.members}")
    if cd_bytes > caps.central_directory_bytes:
        raise _refuse(path.name, "(end record)", f"declares a {cd_bytes} byte directory, "
                      f"over the cap of {caps.central_directory_bytes}")
    return entries, cd_bytes


def _member_parts(wheel: str, info: zipfile.ZipInfo, caps: WheelCaps) -> tuple[str, ...]:
    """The member's path components, after the name and file-type checks."""
    name = info.filename
    shown = name[:caps.name_chars]
    if len(name) > caps.name_chars:
        raise _refuse(wheel, shown, f"has a name over {caps.name_chars} characters")
    if not NAME_CHARS.fullmatch(name):
        raise _refuse(wheel, shown, "has a name that is not printable ASCII without '\\'")
    parts = tuple(name.rstrip("/").split("/"))
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise _refuse(wheel, shown, "is absolute or has an empty, '.' or '..' component")
    if any(len(p) > caps.component_chars for p in parts):
        raise _refuse(wheel, shown, f"has a component over {caps.component_chars} chars")
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR) or mode & ~(stat.S_IFMT(mode) | 0o777):
        raise _refuse(wheel, shown, f"has mode {mode:o}: only plain files and folders, "
                      "without setuid, setgid or sticky bits")
    return parts


def _entry_points(wheel: str, member: str, text: str) -> dict[str, list[str]]:
    """Groups and names, read as importlib.metadata reads entry_points.txt; a line it
    would skip (outside a group) or reject (no '=') refuses the wheel."""
    groups: dict[str, list[str]] = {}
    group: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            group = line.strip("[]")
            groups.setdefault(group, [])
            continue
        name, sep, _ = line.partition("=")
        if group is None or not sep:
            raise _refuse(wheel, member, f"has a line that is no entry point: {line[:80]!r}")
        groups[group].append(name.strip())
    return groups


def _place(wheel: str, parts: tuple[str, ...], own_info: str, layout: BaseLayout) -> None:
    """Refuse a member (its components) that would not land where the rules allow."""
    problem = hook_problem(parts)  # anywhere in the wheel, wherever it would land
    site: tuple[str, ...] | None = None
    if problem or parts[0] == own_info:
        pass
    elif parts[0].endswith(".data"):  # pip's test: any top-level folder named *.data
        problem, site = _data_place(parts, own_info, layout)
    else:
        problem, site = None, parts
    if site is not None and problem is None:
        problem = site_problem(site, layout, metadata_ok=False)
    if problem:
        raise _refuse(wheel, "/".join(parts), problem)


def _data_place(parts: tuple[str, ...], own_info: str,
                layout: BaseLayout) -> tuple[str | None, tuple[str, ...] | None]:
    """(problem, components under site-packages) of a member of a `.data` folder."""
    if parts[0] != own_info.removesuffix(".dist-info") + ".data":
        return "is in a .data folder of another distribution", None
    if len(parts) == 1:
        return None, None
    scheme, rest = parts[1], parts[2:]
    if scheme in ("purelib", "platlib"):
        return None, rest
    if scheme == "scripts":
        if len(rest) > 1:
            return "is a script in a subfolder", None
        return (script_problem(rest[0], layout) if rest else None), None
    if scheme == "headers":  # pip puts them in <prefix>/include/site/pythonX.Y/<name>
        return None, None
    if scheme == "data":
        dest = "/".join((layout.data.rstrip("/"), *rest))
        for folder in layout.site_packages:
            below = under(dest, folder)
            if below is not None:
                return None, below
        if not rest or any(under(dest, folder) is not None for folder in layout.inert):
            return None, None
        return f"lands at {dest}, outside site-packages, share/ and include/", None
    return f"is in the unknown scheme {scheme!r}", None


def inspect_wheel(path: Path, layout: BaseLayout, caps: WheelCaps = WheelCaps()
                  ) -> WheelInstall:
    """Check one wheel; ImageBuildError names the wheel and the member."""
    wheel = path.name
    try:
        project = canonicalize_name(parse_wheel_filename(wheel)[0])
    except InvalidWheelFilename as exc:
        raise _refuse(wheel, "(file name)", f"is not a wheel's name: {exc}") from None
    entries, _ = _directory_extent(path, caps)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) != entries:
                raise _refuse(wheel, "(directory)", f"lists {len(infos)} members, its "
                              f"end record {entries}")
            members = [_member_parts(wheel, info, caps) for info in infos]
            dup = next((n for n, k in Counter("/".join(p) for p in members).items()
                        if k > 1), None)
            if dup is not None:
                raise _refuse(wheel, dup, "appears twice")
            info_dirs = sorted({p[0] for p in members if p[0].endswith(".dist-info")})
            own_info = info_dirs[0] if len(info_dirs) == 1 else ""
            if canonicalize_name(own_info.removesuffix(".dist-info").rsplit("-", 1)[0]) \
                    != project or not own_info:
                raise _refuse(wheel, ", ".join(info_dirs) or "(none)",
                              f"is not the one .dist-info folder of {project}")
            for parts in members:
                _place(wheel, parts, own_info, layout)
            groups = _read_entry_points(zf, wheel, f"{own_info}/entry_points.txt", caps)
    except zipfile.BadZipFile as exc:
        raise _refuse(wheel, "(zip)", f"is not a readable zip: {exc}") from None
    for group, script_names in groups.items():
        owners = {group.split(".", 1)[0], re.split(r"[._-]", group, maxsplit=1)[0]}
        if group not in SCRIPT_GROUPS and owners & layout.packages:
            raise _refuse(wheel, f"{own_info}/entry_points.txt [{group}]",
                          f"plugs into {sorted(owners & layout.packages)[0]!r}, a package "
                          "of the sandbox image")
        for name in script_names if group in SCRIPT_GROUPS else ():
            problem = "is installed by pip under other names" if PIP_RENAMED.fullmatch(
                name) else script_problem(name, layout)
            if problem:
                raise _refuse(wheel, f"{own_info}/entry_points.txt [{group}] {name}",
                              problem)
    return WheelInstall(wheel=wheel, installed_bytes=sum(i.file_size for i in infos))


def _read_entry_points(zf: zipfile.ZipFile, wheel: str, member: str,
                       caps: WheelCaps) -> dict[str, list[str]]:
    try:
        info = zf.getinfo(member)
    except KeyError:
        return {}
    if info.file_size > caps.entry_points_bytes:
        raise _refuse(wheel, member, f"is over {caps.entry_points_bytes} bytes")
    with zf.open(info) as handle:
        data = handle.read(caps.entry_points_bytes + 1)
    try:
        return _entry_points(wheel, member, data.decode("utf-8"))
    except UnicodeDecodeError:
        raise _refuse(wheel, member, "is not UTF-8") from None


def check_wheelhouse(folder: Path, layout: BaseLayout, caps: WheelCaps = WheelCaps()
                     ) -> list[WheelInstall]:
    """Check every wheel of a downloaded wheelhouse against the base's layout; the
    folder may hold only the wheels and the requirements and constraints files."""
    installs: list[WheelInstall] = []
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink() or not entry.is_file() or not (
                entry.name in WHEELHOUSE_FILES or entry.name.endswith(".whl")):
            raise ImageBuildError(f"the task's wheelhouse {folder} holds {entry.name!r}, "
                                  "which is neither a wheel nor its requirements")
        if entry.name.endswith(".whl"):
            installs.append(inspect_wheel(entry, layout, caps))
    total = sum(i.installed_bytes for i in installs)
    if total > caps.installed_bytes:
        raise ImageBuildError(f"the task's wheels unpack to {total} bytes, over the "
                              f"{caps.installed_bytes} byte cap")
    return installs
