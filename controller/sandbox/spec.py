"""What a sandbox job asks for (JobSpec) and what it returns (JobResult).

These are plain, validated dataclasses: the gRPC layer maps its messages onto them and
the executor never sees a dict. Nothing in a JobSpec can weaken the container's
hardening; a request only chooses among bounded limits and the two vetted runtimes.
"""

from __future__ import annotations

import enum
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from controller.errors import FieldError

RUNTIMES = ("runc", "runsc")

# Where things live inside every sandbox container (see sandbox_image/runner.py):
# /job is the job's own size-capped tmpfs; /bilevel, the job's volume, is the runner's.
JOB_ROOT = "/job"
WORK_DIR = "/job/work"
OUT_DIR = "/job/out"
METRICS_FILE = "/job/.bilevel/metrics.json"
RUNNER_DIR = "/bilevel"
RESULT_FILE = "/bilevel/result.json"
RETURNED_DIR = "/bilevel/out"


class SpecError(FieldError):
    """A JobSpec field is invalid; `field` names it (e.g. limits.memory_bytes)."""


class Status(enum.StrEnum):
    """The closed set of outcomes of a job. Only `sandbox_error` is our fault."""

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    OOM = "oom"
    OUTPUT_LIMIT = "output_limit"
    KILLED = "killed"
    SANDBOX_ERROR = "sandbox_error"


@dataclass(frozen=True)
class Limits:
    """Resource bounds of one job. Defaults suit a small CPU job."""

    wall_seconds: float = 60.0
    memory_bytes: int = 1 << 30
    cpus: float = 1.0
    pids: int = 128
    output_bytes: int = 1 << 20
    returned_file_bytes: int = 8 << 20
    tmp_bytes: int = 64 << 20
    disk_bytes: int = 256 << 20

    # Upper bounds a request may not exceed: a guard against typos and abuse, not tuning.
    MAX_WALL_SECONDS = 24 * 3600.0
    MAX_MEMORY_BYTES = 512 << 30

    def validate(self) -> None:
        checks: list[tuple[str, bool, str]] = [
            ("limits.wall_seconds", 0 < self.wall_seconds <= self.MAX_WALL_SECONDS,
             f"must be in (0, {self.MAX_WALL_SECONDS}]"),
            ("limits.memory_bytes", (16 << 20) <= self.memory_bytes <= self.MAX_MEMORY_BYTES,
             "must be between 16 MiB and 512 GiB"),
            ("limits.cpus", 0.01 <= self.cpus <= 256, "must be between 0.01 and 256"),
            ("limits.pids", 8 <= self.pids <= 65536, "must be between 8 and 65536"),
            ("limits.output_bytes", 1024 <= self.output_bytes <= 1 << 30,
             "must be between 1 KiB and 1 GiB"),
            ("limits.returned_file_bytes", 0 <= self.returned_file_bytes <= 4 << 30,
             "must be between 0 and 4 GiB"),
            ("limits.tmp_bytes", (1 << 20) <= self.tmp_bytes <= self.memory_bytes,
             "must be at least 1 MiB and at most limits.memory_bytes (tmpfs counts as memory)"),
            ("limits.disk_bytes", (1 << 20) <= self.disk_bytes <= 1 << 40,
             "must be between 1 MiB and 1 TiB"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise SpecError(name, f"{why}, got {getattr(self, name.split('.')[1])!r}")


@dataclass(frozen=True)
class DataMount:
    """Data mounted read-only into the job at `target` (e.g. prepared token shards).
    `source` is a data reference the backend handed out (backend.py: ensure_data,
    resolve_data), never a host path."""

    source: str
    target: str

    def validate(self, index: int) -> None:
        where = f"data_mounts[{index}]"
        if not self.source or "/" in self.source:
            raise SpecError(f"{where}.source",
                            f"must be a data reference of the backend, got {self.source!r}")
        _check_abs_target(f"{where}.target", self.target)


# Data mounts go under /data and nowhere else: an allow-list, because every other
# place in the image (the venv, the interpreter's site dirs, /usr, /etc, /bin, /run, ...)
# is code or configuration that the runner, the trusted scorer or the job's Python reads.
DATA_ROOT = "/data"
_MOUNT_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_MOUNT_DEPTH = 8


def _check_abs_target(name: str, target: str) -> None:
    """A data mount's target: /data/<name>[/<name>...], each name of letters, digits,
    '.', '_' or '-' not starting with a dot, at most MAX_MOUNT_DEPTH deep."""
    parts = target.split("/")
    ok = (len(parts) >= 3 and parts[0] == "" and "/" + parts[1] == DATA_ROOT
          and len(parts) - 2 <= MAX_MOUNT_DEPTH
          and all(_MOUNT_COMPONENT.fullmatch(p) for p in parts[2:]))
    if not ok:
        raise SpecError(name, f"must be a path under {DATA_ROOT}/ such as /data/train "
                              f"(names of letters, digits, '.', '_', '-'), got {target!r}")


def check_relative_path(name: str, path: str) -> str:
    """Return `path` normalized, or raise if it is absolute or climbs out with '..'."""
    norm = posixpath.normpath(path)
    if not path or path.startswith("/") or norm == "." or norm.startswith("../") or norm == "..":
        raise SpecError(name, f"must be a relative path inside the job, got {path!r}")
    return norm


@dataclass(frozen=True)
class JobSpec:
    """One job: files placed in the work dir, a command, limits and where it runs.

    `command` is an argv run from /job/work by the in-container runner; a plain Python
    file is `["python", "main.py"]`. Files written under /job/out are returned.
    """

    files: dict[str, bytes]
    command: tuple[str, ...]
    limits: Limits = field(default_factory=Limits)
    runtime: str = "runc"
    gpu_ids: tuple[str, ...] = ()
    data_mounts: tuple[DataMount, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    image: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.command or not all(isinstance(a, str) and a for a in self.command):
            raise SpecError("command", "must be a non-empty list of non-empty strings")
        if self.runtime not in RUNTIMES:
            raise SpecError("runtime", f"must be one of {RUNTIMES}, got {self.runtime!r}")
        self.limits.validate()
        total = 0
        for path, data in self.files.items():
            check_relative_path(f"files[{path!r}]", path)
            total += len(data)
        if total > 256 << 20:
            raise SpecError("files", f"total size {total} exceeds 256 MiB")
        for gid in self.gpu_ids:
            if not gid or not all(c.isalnum() or c in "-:." for c in gid):
                raise SpecError("gpu_ids", f"invalid GPU id {gid!r} (use an index or a UUID)")
        targets = set()
        for i, mount in enumerate(self.data_mounts):
            mount.validate(i)
            if mount.target in targets:
                raise SpecError(f"data_mounts[{i}].target", f"duplicate target {mount.target!r}")
            targets.add(mount.target)
        check_env(self.env)


# The environment a job may be given (JobSpec.env: an Execute request's env, a task's
# phases): thread counts of the numeric libraries, TRIAL_* (the controller's per-trial
# settings: TRIAL_SEED, ...) and TASK_* (a task's own settings). Everything else (LD_*,
# PYTHON*, PATH, HOME, BILEVEL_*, proxies, locale) is the runner's to set or nobody's.
JOB_ENV_NAMES = frozenset({
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS", "NUMEXPR_MAX_THREADS", "VECLIB_MAXIMUM_THREADS",
    "TOKENIZERS_PARALLELISM"})
JOB_ENV_PREFIXES = ("TRIAL_", "TASK_")
MAX_ENV_NAMES = 64
MAX_ENV_VALUE_BYTES = 4096
MAX_ENV_NAME_CHARS = 128


def check_env(env: dict[str, str]) -> None:
    """SpecError naming env[NAME] unless every name is allowed and every value small."""
    if len(env) > MAX_ENV_NAMES:
        raise SpecError("env", f"sets {len(env)} variables; at most {MAX_ENV_NAMES}")
    for key, value in env.items():
        where = f"env[{key[:MAX_ENV_NAME_CHARS]!r}]"
        allowed = key in JOB_ENV_NAMES or (
            key.startswith(JOB_ENV_PREFIXES) and len(key) <= MAX_ENV_NAME_CHARS
            and key.isidentifier() and key.isascii())
        if not allowed:
            raise SpecError(where, (
                "is not a variable a job may set: only " + ", ".join(sorted(JOB_ENV_NAMES))
                + " and names starting " + " or ".join(JOB_ENV_PREFIXES)
                + " (the runner sets PATH, HOME, PYTHON*, LD_* and BILEVEL_* itself)"))
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > MAX_ENV_VALUE_BYTES or "\0" in value:
            raise SpecError(where, f"value must be at most {MAX_ENV_VALUE_BYTES} bytes "
                                   f"without NUL characters, got {size} bytes")


@dataclass(frozen=True)
class Frame:
    """One traceback frame, innermost last (Python's order)."""

    filename: str
    lineno: int
    name: str
    line: str


@dataclass(frozen=True)
class ExceptionInfo:
    type: str
    message: str
    frames: tuple[Frame, ...]


@dataclass(frozen=True)
class Timings:
    create_s: float = 0.0
    start_s: float = 0.0  # cold: the container's start; warm: handing it the job
    run_s: float = 0.0
    teardown_s: float = 0.0
    warm: bool = False  # it ran in a pooled container (warm_pool.py), not a cold start


@dataclass(frozen=True)
class JobResult:
    """Outcome of one job. User-code failure is a normal result, not an exception."""

    status: Status
    exit_code: int | None
    stdout_head: str = ""
    stdout_tail: str = ""
    stderr_head: str = ""
    stderr_tail: str = ""
    output_bytes: int = 0
    exception: ExceptionInfo | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    timings: Timings = field(default_factory=Timings)
    detail: str = ""
    # User+system CPU seconds of all the job's processes, measured by the trusted
    # runner (getrusage(RUSAGE_CHILDREN) after every process is reaped); None when the
    # runner could not report (killed container, sandbox failure).
    cpu_seconds: float | None = None
    # The Ray node the job ran on (ray_backend.py); "" on the controller's own engine.
    node: str = ""

    @property
    def stdout(self) -> str:
        """Head and tail joined; the middle of a long output is elided."""
        return _join(self.stdout_head, self.stdout_tail)

    @property
    def stderr(self) -> str:
        return _join(self.stderr_head, self.stderr_tail)


def _join(head: str, tail: str) -> str:
    return head + tail if not tail else f"{head}\n[... output elided ...]\n{tail}"
