"""`bilevel-task.toml`: what a task directory declares, parsed into frozen dataclasses.

A task is a directory: the manifest, the one `editable` file the search changes, the
trusted scorer, and data folders that only reach the jobs as read-only mounts. The
loader checks everything it can before a container runs, and every error names the
manifest field (`train.mounts`, `knobs.LR.low`, ...) and what would be valid. A task
directory holds no symlinks at all: that is what keeps a mount, the editable file and
the copied files inside the directory.

Schema (all keys; an unknown key is an error):

    name, editable, metric, direction ("minimize" | "maximize"), description,
    requirements (list of pip requirement strings), builtin ("surrogate" | a trainer
    preset: the controller's own runner; no [train] then)
    [train]  command (list of strings; `{name}` templates make flags knobs), mounts
             {dir in task = target: /data/... or relative to the working copy},
             wall_seconds, memory_mb, cpus, outputs (relative dir), output_mb
    [score]  command, mounts, wall_seconds, memory_mb, cpus, files (scorer-only files)
    [knobs]  NAME = {low, high, log, power_of_two} | {choices = [...]} | true | false
             (a flag may add `default`); NAME is a top-level name of a Python
             editable, a dotted key of a YAML/JSON/TOML editable, or a `{name}` of
             train.command (then no editable: the search edits flags.json)
"""

from __future__ import annotations

import hashlib
import math
import posixpath
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.research.tasks import config_knobs, flag_knobs
from controller.research.tasks.errors import TaskError
from controller.research.tasks.knob_document import KnobDocument, document_of
from controller.research.tasks.knob_rules import KnobRange, parse_knob, search_space
from controller.sandbox.spec import DataMount, SpecError

MANIFEST = "bilevel-task.toml"
DIRECTIONS = ("minimize", "maximize")
BUILTINS = ("surrogate", "cpu-tiny", "gpu-5min")
MAX_MANIFEST_BYTES = 64 << 10
MAX_FILES = 2000  # in the copied part of the directory (data folders excluded)
MAX_COPIED_BYTES = 64 << 20  # the part phase 1 and phase 2 get as files
MAX_DEPTH = 16
MAX_OUTPUT_MB = 128  # phase 1's outputs travel as phase 2's files (JobSpec caps 256 MiB)
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_METRIC = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_REQUIREMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-\[\],<>=!~ ]{0,199}")
_TOP = {"name", "editable", "metric", "direction", "description", "requirements", "builtin",
        "train", "score", "knobs"}
_TRAIN = {"command", "mounts", "wall_seconds", "memory_mb", "cpus", "outputs", "output_mb"}
_SCORE = {"command", "mounts", "wall_seconds", "memory_mb", "cpus", "files"}


# A mount whose target is relative to the working copy is mounted here, and a link at
# the relative path points to it (the jobs' mounts stay under /data, an allow-list).
RELATIVE_MOUNTS = "/data/task"


@dataclass(frozen=True)
class Mount:
    """A folder of the task directory, mounted read-only at `target` in a phase."""

    source: str  # relative to the task directory, normalized
    target: str  # absolute path in the container
    link: str = ""  # the relative target the manifest gave: a link in the working copy


@dataclass(frozen=True)
class Phase:
    command: tuple[str, ...]
    mounts: tuple[Mount, ...] = ()
    wall_seconds: float = 120.0
    memory_mb: int = 1024
    cpus: float = 1.0
    outputs: str = "out"  # train only: what it writes for the scorer
    output_mb: int = 64  # train only: cap on what it writes there
    files: tuple[str, ...] = ()  # score only: files phase 1 never gets


@dataclass(frozen=True)
class TaskManifest:
    root: Path
    name: str
    editable: str
    metric: str
    direction: str
    description: str = ""
    requirements: tuple[str, ...] = ()
    builtin: str = ""
    train: Phase | None = None
    score: Phase | None = None
    knobs: tuple[KnobRange, ...] = ()
    flag_defaults: tuple[tuple[str, Any], ...] = ()  # a flags task's baseline values

    @property
    def document(self) -> KnobDocument:
        """The file the search edits and where the knobs live in it."""
        return document_of(self.editable, [k.name for k in self.knobs if not k.excluded],
                           self.train.command if self.train else ())

    @property
    def self_reported(self) -> bool:
        """No trusted scorer: the metric is what the candidate says it is."""
        return self.score is None and self.builtin == ""

    @property
    def data_dirs(self) -> tuple[str, ...]:
        """Mount sources: folders that reach jobs only as read-only volumes."""
        phases = [p for p in (self.train, self.score) if p is not None]
        return tuple(sorted({m.source for p in phases for m in p.mounts}))

    def editable_source(self) -> str:
        """The baseline of the editable file; a builtin's is the controller's own."""
        if self.builtin:
            return builtin_source(self.builtin)
        if self.document.kind == "flags":
            return flag_knobs.flags_document(dict(self.flag_defaults))
        return (self.root / self.editable).read_text(encoding="utf-8")

    def digest(self) -> str:
        """Hash of the manifest and the editable file: what lessons are keyed by."""
        h = hashlib.sha256()
        for part in ((self.root / MANIFEST).read_bytes(), self.editable_source().encode()):
            h.update(len(part).to_bytes(8, "big") + part)
        return h.hexdigest()[:16]


def builtin_source(builtin: str) -> str:
    """The baseline file of a builtin task: trainer/surrogate.py, or the GPT's train.py
    with the preset's knob values (trainer/presets.py); one source of truth for both."""
    if builtin == "surrogate":
        return (Path(__file__).resolve().parents[3] / "trainer" / "surrogate.py").read_text()
    from trainer.presets import PRESETS

    return PRESETS[builtin].train_source()


def _fail(field: str, reason: str) -> TaskError:
    return TaskError(field, reason)


def _str(raw: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = raw.get(key, default)
    if value is None:
        raise _fail(f"{where}{key}", "is required")
    if not isinstance(value, str):
        raise _fail(f"{where}{key}", f"must be a string, got {value!r}")
    return value


def _number(raw: dict[str, Any], key: str, where: str, default: float, low: float,
            high: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not math.isfinite(value) or not low <= value <= high:
        raise _fail(f"{where}{key}", f"must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def _unknown(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in raw:
        if key not in allowed:
            raise _fail(f"{where}{key}", f"unknown key; allowed: {', '.join(sorted(allowed))}")


def check_relative(root: Path, rel: Any, field: str, *, kind: str) -> str:
    """`rel` normalized, if it names a `kind` ("file", "dir" or "none": must not exist)
    inside `root` reached without '..' or symlinks."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel:
        raise _fail(field, f"must be a relative path inside the task directory, got {rel!r}")
    norm = posixpath.normpath(rel)
    if norm in (".", "..") or norm.startswith("../") or "/../" in f"/{rel}/":
        raise _fail(field, f"{rel!r} climbs out of the task directory ('..')")
    path = root
    for part in norm.split("/"):
        path = path / part
        if path.is_symlink():
            raise _fail(field, f"{rel!r} goes through a symlink; a task holds none")
    if kind == "file" and not path.is_file():
        raise _fail(field, f"{rel!r} is not a file in the task directory {root}")
    if kind == "dir" and not path.is_dir():
        raise _fail(field, f"{rel!r} is not a folder in the task directory {root}")
    if kind == "none" and path.exists() and not path.is_dir():
        raise _fail(field, f"{rel!r} exists in the task directory and is not a folder")
    return norm


def _command(raw: Any, field: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw or \
            not all(isinstance(a, str) and a and "\0" not in a for a in raw):
        raise _fail(field, f"must be a non-empty list of non-empty strings, got {raw!r}")
    if len(raw) > 64 or sum(len(a) for a in raw) > 4096:
        raise _fail(field, "is too long (64 arguments, 4096 characters at most)")
    return tuple(raw)


def _mounts(root: Path, raw: Any, field: str) -> tuple[Mount, ...]:
    if not isinstance(raw, dict):
        raise _fail(field, f"must be a table {{\"dir\" = \"/target\"}}, got {raw!r}")
    mounts = []
    for source, target in raw.items():
        src = check_relative(root, source, f"{field}.{source}", kind="dir")
        if not isinstance(target, str):
            raise _fail(f"{field}.{source}", f"target must be a string, got {target!r}")
        link = ""
        if not target.startswith("/"):
            link = check_relative(root, target, f"{field}.{source}", kind="any")
            target = f"{RELATIVE_MOUNTS}/{link}"
        try:
            DataMount(source="v", target=target).validate(0)
        except SpecError as exc:
            raise _fail(f"{field}.{source}", f"target {exc.reason}") from None
        mounts.append(Mount(src, target, link))
    targets = [m.target for m in mounts]
    if len(set(targets)) != len(targets):
        raise _fail(field, f"mounts two folders at one target: {targets}")
    return tuple(mounts)


def _phase(root: Path, raw: Any, where: str, allowed: set[str]) -> Phase:
    if not isinstance(raw, dict):
        raise _fail(where, "must be a table")
    _unknown(raw, allowed, f"{where}.")
    p = f"{where}."
    if "command" not in raw:
        raise _fail(f"{p}command", "is required, e.g. [\"python\", \"train.py\"]")
    phase = Phase(
        command=_command(raw["command"], f"{p}command"),
        mounts=_mounts(root, raw.get("mounts", {}), f"{p}mounts"),
        wall_seconds=_number(raw, "wall_seconds", p, 120, 1, 24 * 3600),
        memory_mb=int(_number(raw, "memory_mb", p, 1024, 64, 512 << 10)),
        cpus=_number(raw, "cpus", p, 1.0, 0.1, 256))
    if where == "train":
        outputs = check_relative(root, _str(raw, "outputs", p, "out"), f"{p}outputs",
                                 kind="none")
        phase = Phase(**{**vars(phase), "outputs": outputs,
                         "output_mb": int(_number(raw, "output_mb", p, 64, 1, MAX_OUTPUT_MB))})
    else:
        files = raw.get("files", [])
        if not isinstance(files, list):
            raise _fail(f"{p}files", f"must be a list of file names, got {files!r}")
        named = {check_relative(root, f, f"{p}files", kind="file") for f in files}
        named |= {a for a in phase.command if (root / a).is_file() and not
                  (root / a).is_symlink() and "/.." not in f"/{a}"}
        phase = Phase(**{**vars(phase), "files": tuple(sorted(named))})
    return phase


def _requirements(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or len(raw) > 64:
        raise _fail("requirements", f"must be a list of at most 64 strings, got {raw!r}")
    for item in raw:
        if not isinstance(item, str) or not _REQUIREMENT.fullmatch(item):
            raise _fail("requirements", f"{item!r} is not a plain requirement such as "
                                        "\"scikit-learn==1.5.2\" (no URLs, paths or options)")
    return tuple(raw)


def _editable(root: Path, raw: dict[str, Any], builtin: str, train: Phase | None) -> str:
    """The editable file: a Python file or a YAML/JSON/TOML config; none for a task
    whose knobs are train.command's flags (the search edits flags.json then)."""
    if train is not None and flag_knobs.uses(train.command):
        if "editable" in raw:
            raise _fail("editable", "train.command has {name} templates, so the knobs are its "
                                    "flags and the search edits flags.json; leave editable out")
        return check_relative(root, flag_knobs.FLAGS_FILE, "editable", kind="none")
    editable = check_relative(root, _str(raw, "editable", ""), "editable",
                              kind="none" if builtin else "file")
    if not editable.endswith(".py") and (builtin or not config_knobs.format_of(editable)):
        raise _fail("editable", f"must be a Python file (its constants are the knobs) or a "
                                f"YAML, JSON or TOML config (its keys), got {editable!r}")
    return editable


def _flag_defaults(root: Path, document: KnobDocument, ranges: tuple[KnobRange, ...]
                   ) -> tuple[tuple[str, Any], ...]:
    """Each flag knob's baseline: [knobs]'s `default`, else the literal default of the
    script's own `add_argument` for that flag (the command's Python files are read)."""
    scripts: dict[str, Any] = {}
    for arg in document.command:
        if arg.endswith(".py") and (root / arg).is_file() and not (root / arg).is_symlink():
            text = (root / arg).read_text(encoding="utf-8", errors="replace")
            scripts.update(flag_knobs.argparse_defaults(text))
    given = {r.name: r for r in ranges}
    out: dict[str, Any] = {}
    for use in flag_knobs.uses(document.command):
        if use.name in out:
            continue
        default = given[use.name].default if use.name in given else None
        if default is None and use.flag in scripts:
            default = scripts[use.flag]
        if default is None:
            raise _fail(f"knobs.{use.name}", f"train.command passes {{{use.name}}} "
                        f"({use.flag or 'positional'}) but no argparse default for it was "
                        f"found in the command's scripts; give default = ... in [knobs]")
        out[use.name] = default
    return tuple(out.items())


def load_task_dir(path: str | Path) -> TaskManifest:
    """Parse and check `path`/bilevel-task.toml; raises TaskError naming the field."""
    root = Path(path)
    if root.is_symlink() or not root.is_dir():
        raise _fail("task", f"{path} is not a directory")
    root = root.resolve()
    manifest = root / MANIFEST
    if manifest.is_symlink() or not manifest.is_file():
        raise _fail("task", f"{root} has no {MANIFEST}")
    data = manifest.read_bytes()
    if len(data) > MAX_MANIFEST_BYTES:
        raise _fail("task", f"{MANIFEST} is over {MAX_MANIFEST_BYTES} bytes")
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise _fail("task", f"{MANIFEST} is not valid TOML: {exc}") from None
    _unknown(raw, _TOP, "")
    name = _str(raw, "name", "")
    if not _NAME.match(name):
        raise _fail("name", f"must be 1-64 of a-z 0-9 . _ - (starting alphanumeric), "
                            f"got {name!r}")
    metric = _str(raw, "metric", "")
    if not _METRIC.match(metric):
        raise _fail("metric", f"must be an identifier (a key of the scorer's JSON), got {metric!r}")
    direction = _str(raw, "direction", "")
    if direction not in DIRECTIONS:
        raise _fail("direction", f"must be \"minimize\" or \"maximize\", got {direction!r}")
    description = _str(raw, "description", "", "")
    if len(description) > 4000:
        raise _fail("description", "must be at most 4000 characters")
    builtin = _str(raw, "builtin", "", "")
    if builtin and builtin not in BUILTINS:
        raise _fail("builtin", f"must be one of {', '.join(BUILTINS)}, got {builtin!r}")
    if builtin:
        for key in ("train", "score", "requirements", "knobs"):
            if key in raw:
                raise _fail(key, f"a builtin task ({builtin}) is run by the controller's "
                                 "own runner; leave this out")
        train, score = None, None
    else:
        if "train" not in raw:
            raise _fail("train", "is required: [train] command = [...]")
        train = _phase(root, raw["train"], "train", _TRAIN)
        score = _phase(root, raw["score"], "score", _SCORE) if "score" in raw else None
    editable = _editable(root, raw, builtin, train)
    knobs_raw = raw.get("knobs", {})
    if not isinstance(knobs_raw, dict):
        raise _fail("knobs", "must be a table of NAME = {low, high} ranges")
    document = document_of(editable, list(knobs_raw), train.command if train else ())
    knob_ranges = tuple(parse_knob(n, r, document) for n, r in knobs_raw.items())
    flag_defaults = _flag_defaults(root, document, knob_ranges) \
        if document.kind == "flags" else ()
    task = TaskManifest(
        root=root, name=name, editable=editable, metric=metric, direction=direction,
        description=description, requirements=_requirements(raw.get("requirements", [])),
        builtin=builtin, train=train, score=score, knobs=knob_ranges,
        flag_defaults=flag_defaults)
    _check_layout(task)
    _check_knobs(task)
    return task


def _check_layout(task: TaskManifest) -> None:
    """No symlinks anywhere; the editable and scorer files are not inside a data folder
    or the outputs; the copied part is within the caps."""
    for path in task.root.rglob("*"):
        if path.is_symlink():
            raise _fail("task", f"{path.relative_to(task.root)} is a symlink; a task holds none")
    data = task.data_dirs
    if task.score is not None and task.editable in task.score.files:
        raise _fail("score.files", f"the editable file {task.editable!r} cannot be the scorer's")
    inside = [(task.editable, "editable")] + [
        (f, "score.files") for f in (task.score.files if task.score else ())]
    for rel, field in inside:
        for d in data:
            if rel == d or rel.startswith(d + "/"):
                raise _fail(field, f"{rel!r} lies in data folder {d!r}, which jobs get only "
                                   "as a mount")
    for where, phase in (("train", task.train), ("score", task.score)):
        for mount in phase.mounts if phase else ():
            if mount.link and (task.root / mount.link).exists() and mount.link not in data:
                raise _fail(f"{where}.mounts.{mount.source}",
                            f"target {mount.link!r} is a path of the task directory's own "
                            "files; a relative target must be free or be a data folder")
    if task.train is not None:
        out = task.train.outputs
        for d in data:
            if out == d or out.startswith(d + "/") or d.startswith(out + "/"):
                raise _fail("train.outputs", f"{out!r} overlaps data folder {d!r}")
        if (task.root / out).exists() and any((task.root / out).rglob("*")):
            raise _fail("train.outputs", f"{out!r} already holds files in the task directory")
    copied_files(task)


def copied_files(task: TaskManifest) -> dict[str, bytes]:
    """The task directory's files without its data folders: what a phase gets copied
    (phase 1 also without the scorer's files). Raises TaskError past the caps."""
    data = task.data_dirs
    files: dict[str, bytes] = {}
    total = 0
    for path in sorted(task.root.rglob("*")):
        rel = path.relative_to(task.root).as_posix()
        if path.is_symlink():
            raise _fail("task", f"{rel} is a symlink; a task holds none")
        if not path.is_file() or any(rel == d or rel.startswith(d + "/") for d in data):
            continue
        if rel.count("/") >= MAX_DEPTH or "__pycache__" in rel.split("/"):
            continue
        if len(files) >= MAX_FILES:
            raise _fail("task", f"more than {MAX_FILES} files outside the data folders")
        content = path.read_bytes()
        total += len(content)
        if total > MAX_COPIED_BYTES:
            raise _fail("task", f"files outside the data folders exceed {MAX_COPIED_BYTES} "
                                "bytes; put data in a mounted folder")
        files[rel] = content
    return files


def phase1_files(task: TaskManifest) -> dict[str, bytes]:
    """What the candidate's phase gets: the copied files without the scorer's."""
    hidden = set(task.score.files if task.score else ())
    return {rel: data for rel, data in copied_files(task).items() if rel not in hidden}


def _check_knobs(task: TaskManifest) -> None:
    """The editable file parses and the task has at least one knob, so a task that
    cannot be searched is refused here, never after its baseline ran."""
    document = task.document
    try:
        source = task.editable_source()
    except UnicodeDecodeError:
        raise _fail("editable", f"{task.editable} is not UTF-8") from None
    try:
        document.check(source)
        values = document.read(source)
    except (ValueError, SyntaxError) as exc:
        raise _fail("editable", str(exc)) from None
    search_space(document, task.knobs, values)
