"""Where a task's requirements may install files in the sandbox image: one allow-list,
read by the static wheel check (controller/sandbox/wheel_check.py) before a task image
is built and by the comparison of the built image with its base
(controller/sandbox/install_check.py) after.

A wheel may install only: package files under the venv's site-packages, in top-level
entries that no directory on the base's sys.path already has (so it neither shadows nor
extends a module trusted code imports), its own `.dist-info`, scripts in the venv's bin
directory whose names no command on the base's PATH has, and data files and headers
under the venv's share/ and include/ (man pages, fonts, notebook extensions, C headers:
nothing the interpreter, the loader or the shell reads). Nowhere in any of them an
interpreter start-up hook: a `.pth` file or a `sitecustomize`/`usercustomize` module in
any form (source, bytecode, extension module, package).
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# Printed by the sandbox image's own Python (trusted) in a hardened one-off container:
# where pip installs, what the interpreter imports from and what the shell runs.
PROBE_SCRIPT = r"""
import json, os, sys, sysconfig
paths = sysconfig.get_paths()
real = os.path.realpath
dirs = [real(p) for p in sys.path if p and os.path.isdir(p)]
stdlib = {real(paths["stdlib"]), real(paths["platstdlib"])}
bins = [real(p) for p in os.environ.get("PATH", "").split(":") if p and os.path.isdir(p)]
def names(d):
    try:
        return sorted(os.listdir(d))
    except OSError:
        return []
print(json.dumps({
    "site_packages": sorted({real(paths["purelib"]), real(paths["platlib"])}),
    "scripts": real(paths["scripts"]), "data": real(paths["data"]),
    "import_dirs": {d: names(d) for d in dirs}, "path_dirs": {d: names(d) for d in bins},
    "stdlib": sorted(stdlib),
}))
"""
MAX_PROBE_BYTES = 8 << 20
HOOK_NAMES = frozenset({"sitecustomize", "usercustomize"})
METADATA_SUFFIXES = (".dist-info", ".egg-info", ".egg-link", ".egg")
SCRIPT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
INERT_FOLDERS = ("share", "include")  # under the venv's prefix
ALLOWED = ("a wheel may install only package files under site-packages in top-level "
           "names the sandbox image does not have, its own .dist-info, scripts whose "
           "names no command of the sandbox image has, and data files and headers under "
           "the venv's share/ and include/; no .pth, sitecustomize or usercustomize "
           "anywhere")


def stem(name: str) -> str:
    """The import name an entry of a sys.path directory provides: `numpy` for `numpy`,
    `numpy.libs`, `numpy.py` and `numpy.cpython-311-x86_64-linux-gnu.so`."""
    return name.split(".", 1)[0]


@dataclass(frozen=True)
class BaseLayout:
    """What a task image's base already has, from PROBE_SCRIPT's output."""

    site_packages: tuple[str, ...]  # purelib and platlib (one folder in a venv)
    scripts: str  # the venv's bin directory, first on PATH
    data: str  # where a wheel's `.data/data` lands (the venv's prefix)
    taken: frozenset[str]  # entries (and their import names) of every sys.path dir
    packages: frozenset[str]  # import names of those outside the standard library
    commands: frozenset[str]  # entries of every PATH directory

    @property
    def inert(self) -> tuple[str, ...]:
        """Folders nothing at start-up reads: data files and headers may land there."""
        return tuple(f"{self.data.rstrip('/')}/{name}" for name in INERT_FOLDERS)

    @classmethod
    def from_probe(cls, raw: bytes) -> BaseLayout:
        """Parse PROBE_SCRIPT's output; ValueError if it is not what the script prints."""
        if len(raw) > MAX_PROBE_BYTES:
            raise ValueError(f"the layout probe printed {len(raw)} bytes")
        doc = json.loads(raw)
        site = tuple(str(p) for p in doc["site_packages"])
        import_dirs: Mapping[str, Sequence[str]] = doc["import_dirs"]
        path_dirs: Mapping[str, Sequence[str]] = doc["path_dirs"]
        if not site or any(not posixpath.isabs(p) for p in (*site, doc["scripts"])):
            raise ValueError(f"the layout probe printed no usable paths: {doc!r:.300}")
        stdlib = [str(p) for p in doc["stdlib"]]
        names = [str(n) for d in import_dirs for n in import_dirs[d]]
        outside = [str(n) for d in import_dirs if d in site or not any(
            under(d, lib) is not None for lib in stdlib) for n in import_dirs[d]]
        if not set(site) <= set(import_dirs):
            raise ValueError(f"site-packages {site} is not on the base's sys.path")
        return cls(site_packages=site, scripts=str(doc["scripts"]), data=str(doc["data"]),
                   taken=frozenset(names) | frozenset(stem(n) for n in names),
                   packages=frozenset(stem(n) for n in outside),
                   commands=frozenset(str(n) for d in path_dirs.values() for n in d))


def hook_problem(parts: Iterable[str]) -> str | None:
    """Why a path with these components would be an interpreter start-up hook."""
    for part in parts:
        lowered = part.lower()
        if lowered.endswith(".pth"):
            return "is a .pth file (the interpreter runs its import lines at start-up)"
        if stem(lowered) in HOOK_NAMES:
            return f"is a {stem(lowered)} module (the interpreter imports it at start-up)"
    return None


def site_problem(parts: Sequence[str], layout: BaseLayout, *,
                 metadata_ok: bool) -> str | None:
    """Why a path under site-packages (its components) is not allowed. `metadata_ok`: a
    top-level `.dist-info` may be the installing wheel's own."""
    problem = hook_problem(parts)
    if problem or not parts:
        return problem
    top = parts[0]
    if top.endswith(METADATA_SUFFIXES):
        return None if metadata_ok and top.endswith(".dist-info") and top not in \
            layout.taken else "is the metadata of another distribution"
    if top == "__pycache__":
        return "is bytecode for site-packages' top-level modules"
    if top in layout.taken or stem(top) in layout.taken:
        return f"shadows or extends {stem(top)!r}, which the sandbox image already has"
    return None


def script_problem(name: str, layout: BaseLayout) -> str | None:
    """Why a script (a file in the venv's bin directory) of this name is not allowed."""
    if not SCRIPT_NAME.fullmatch(name):
        return "is not a plain script name (letters, digits, . _ + -)"
    if name in layout.commands:
        return f"shadows the command {name!r} of the sandbox image"
    return hook_problem([name])


def under(path: str, folder: str) -> tuple[str, ...] | None:
    """The components of `path` below `folder`, or None when it is not below it."""
    if path == folder:
        return ()
    if not path.startswith(folder.rstrip("/") + "/"):
        return None
    return tuple(path[len(folder.rstrip("/")) + 1:].split("/"))


def placement_problem(path: str, layout: BaseLayout, *, metadata_ok: bool) -> str | None:
    """Why an absolute path a task image adds is not allowed (None: it is)."""
    problem = hook_problem(path.split("/"))
    if problem:
        return problem
    for site in layout.site_packages:
        parts = under(path, site)
        if parts is not None:
            return site_problem(parts, layout, metadata_ok=metadata_ok) if parts else \
                "replaces site-packages itself"
    parts = under(path, layout.scripts)
    if parts is not None and len(parts) == 1:
        return script_problem(parts[0], layout)
    for folder in layout.inert:
        parts = under(path, folder)
        if parts:
            return hook_problem(parts)
    return (f"is outside site-packages ({', '.join(layout.site_packages)}), "
            f"{layout.scripts}/<script> and {', '.join(layout.inert)}")
