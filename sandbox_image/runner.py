"""In-container runner: PID 1 of every sandbox container, the trusted side of a job.

Layout (the container config is controller/sandbox/hardening.py):

- /bilevel is the job's volume, root-owned 0700: the controller places job.json and the
  job's files (in/) there; the runner writes the returned files (out/) and result.json
  there, and only after every process of the job is dead. The job can neither read
  nor write it, so it cannot forge the result.
- /job is a tmpfs of exactly disk_bytes, root-owned 0755, holding work/ (a copy of
  in/), out/ and .bilevel/ (the metrics and exception records the job writes), all
  owned by the job's uid. The size cap is the disk bound: a write past it fails with
  ENOSPC wherever the job hides it (no walk to fool). Its pages count against the
  container's memory limit, so disk_bytes is carved out of memory_bytes when used.

The runner starts as root with only SETUID, SETGID, SETPCAP, KILL and CHOWN, under
no-new-privileges and the sandbox's seccomp profile (controller/sandbox/seccomp.py). It
lays out /job (CHOWN), starts the job as uid 10001 with no capabilities and an empty
bounding set (SETPCAP, SETUID, SETGID), and then keeps only KILL and SETUID: KILL to end
every process of the job, SETUID to read what the job wrote as the job's own uid (the
runner has no DAC_READ_SEARCH or DAC_OVERRIDE: it reads only what the job's uid could).
A process of another uid without CAP_KILL or CAP_SYS_PTRACE can neither signal nor trace
the runner, under runc or gVisor. When the job's main process ends, the runner SIGKILLs
every other process (kill(-1)) and reaps until none is left, then measures their CPU
(getrusage(RUSAGE_CHILDREN)), reads the metrics, copies the returned files and writes
the result. Everything the job wrote is read with O_NOFOLLOW and size caps; the
controller still treats the result as untrusted and classifies timeouts, OOM and floods
itself.

It is started as `/opt/venv/bin/python3 -I -S runner.py` (controller/sandbox/
hardening.py): no site processing, no environment, no script directory on sys.path.
Standard library only, so it runs in any image with Python 3, and it imports nothing a
job or a task could shadow.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

RUNNER_DIR = "/bilevel"
JOB_FILE = f"{RUNNER_DIR}/job.json"
IN_DIR = f"{RUNNER_DIR}/in"
RETURNED_DIR = f"{RUNNER_DIR}/out"
RESULT_FILE = f"{RUNNER_DIR}/result.json"
GO_FILE = f"{RUNNER_DIR}/go"  # a pooled runner's job is complete once this exists
GO_POLL_SECONDS = 0.005
JOB_ROOT = "/job"
WORK_DIR = f"{JOB_ROOT}/work"
OUT_DIR = f"{JOB_ROOT}/out"
REPORT_DIR = f"{JOB_ROOT}/.bilevel"  # the job's own: untrusted
METRICS_NAME = "metrics.json"
EXCEPTIONS_NAME = "exceptions"
HOOK_DIR = "/opt/bilevel/hook"
JOB_UID = JOB_GID = 10001
MAX_JSON_BYTES = 1 << 20
MAX_EXCEPTION_ENTRIES = 1000
MAX_RETURNED_ENTRIES = 10_000
MAX_RETURNED_DEPTH = 32
CAP_KILL, CAP_SETUID = 5, 7
KEPT_CAPS = (CAP_KILL, CAP_SETUID)  # what the runner holds once the job has started
PR_CAPBSET_DROP = 24
LINUX_CAPABILITY_VERSION_3 = 0x20080522
DISK_POLL_SECONDS = 0.5
DISK_FULL_SLACK = 256 << 10  # free bytes below which the job has hit disk_bytes
_NOFOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@contextlib.contextmanager
def _as_job_user() -> Iterator[None]:
    """File access as the job's uid (the effective uid; real and saved stay root, so
    the runner returns to root after): the runner reads only what the job could read,
    and needs no capability that overrides file permissions."""
    os.seteuid(JOB_UID)
    try:
        yield
    finally:
        os.seteuid(0)


def _read_json_at(dir_fd: int | None, name: str) -> Any:
    """A job-written JSON file: regular files only, never through a link, size-capped."""
    try:
        fd = os.open(name, _NOFOLLOW, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symbolic link, never followed
        return {"__error__": f"cannot open {name}: {exc.strerror}"}
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {"__error__": f"{name} is not a regular file"}
        data = os.read(fd, MAX_JSON_BYTES + 1)
    except OSError as exc:
        return {"__error__": f"cannot read {name}: {exc.strerror}"}
    finally:
        os.close(fd)
    if len(data) > MAX_JSON_BYTES:
        return {"__error__": f"{name} exceeds {MAX_JSON_BYTES} bytes"}
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        return {"__error__": f"{name} is not valid JSON: {exc}"}


def _open_dir(path: str, dir_fd: int | None = None) -> int | None:
    with contextlib.suppress(OSError):
        return os.open(path, _NOFOLLOW | os.O_DIRECTORY, dir_fd=dir_fd)
    return None


def _job_reports(pid: int) -> tuple[Any, Any]:
    """(exception record, metrics) the job left in REPORT_DIR. The exception record is
    the main process's own, else the newest one (the command may be a shell)."""
    report = _open_dir(REPORT_DIR)
    if report is None:
        return None, None
    try:
        metrics = _read_json_at(report, METRICS_NAME)
        folder = _open_dir(EXCEPTIONS_NAME, report)
        if folder is None:
            return None, metrics
        try:
            own = f"{pid}.json"
            entries: list[tuple[float, str]] = []
            with os.scandir(folder) as scan:
                for count, entry in enumerate(scan):
                    if count >= MAX_EXCEPTION_ENTRIES:
                        break
                    with contextlib.suppress(OSError):
                        entries.append((entry.stat(follow_symlinks=False).st_mtime,
                                        entry.name))
            names = {name for _, name in entries}
            chosen = own if own in names else max(entries)[1] if entries else None
            return (_read_json_at(folder, chosen) if chosen else None), metrics
        finally:
            os.close(folder)
    finally:
        os.close(report)


def _copy_tree_for_job(src: str, dst: str) -> list[str]:
    """Copy the controller's files into the job's area; return what was made (for the
    caller to hand to the job once everything is written: root has no DAC_OVERRIDE)."""
    made: list[str] = []
    for dirpath, dirnames, filenames in os.walk(src):
        target = os.path.normpath(os.path.join(dst, os.path.relpath(dirpath, src)))
        os.makedirs(target, exist_ok=True)
        made.append(target)
        for name in filenames:
            path = os.path.join(target, name)
            shutil.copyfile(os.path.join(dirpath, name), path, follow_symlinks=False)
            made.append(path)
        dirnames.sort()
    return made


def _prepare() -> str:
    """Lay out /job for the job; return an error text if its files do not fit. The
    runner's own directory (job.json, the result) stays root's alone."""
    os.chmod(RUNNER_DIR, 0o700)
    os.chmod(JOB_ROOT, 0o755)
    made = [WORK_DIR, OUT_DIR, REPORT_DIR, f"{REPORT_DIR}/{EXCEPTIONS_NAME}"]
    for path in made:
        os.makedirs(path, exist_ok=True)
    try:
        made += _copy_tree_for_job(IN_DIR, WORK_DIR)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        return f"the job's files do not fit in its disk (disk_bytes): {exc}"
    for path in made:
        os.chown(path, JOB_UID, JOB_GID)
    return ""


def _become_job_user() -> None:
    """Drop to the job's uid for good: the kernel clears every capability on that
    change; the bounding set is emptied first (PR_CAPBSET_DROP = 24) so no file can
    give one back."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(64):
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            if ctypes.get_errno() == 22:  # EINVAL: past the last capability
                break
            raise OSError(ctypes.get_errno(), "cannot drop capability bounding set")
    os.setgroups([])
    os.setresgid(JOB_GID, JOB_GID, JOB_GID)
    os.setresuid(JOB_UID, JOB_UID, JOB_UID)
    if os.getresuid() != (JOB_UID,) * 3 or os.getresgid() != (JOB_GID,) * 3:
        raise OSError("the job's uid did not stick")


def _start_child(disk_bytes: int, nproc: int | None) -> None:
    """Runs in the forked child before exec."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (disk_bytes, disk_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if nproc:  # only under gVisor, where the count is per sandbox (see hardening.py)
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    os.umask(0o022)
    _become_job_user()


def _child_env(job: dict[str, Any]) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": WORK_DIR,
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": HOOK_DIR,
        "BILEVEL_METRICS": f"{REPORT_DIR}/{METRICS_NAME}",
        "BILEVEL_EXCEPTION_DIR": f"{REPORT_DIR}/{EXCEPTIONS_NAME}",
        "TMPDIR": "/tmp",
        "MPLCONFIGDIR": "/tmp",
    }
    for key in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        if key in os.environ:
            env[key] = os.environ[key]
    extra = {str(k): str(v) for k, v in job.get("env", {}).items()}
    if "PYTHONPATH" in extra:
        extra["PYTHONPATH"] = f"{HOOK_DIR}:{extra['PYTHONPATH']}"
    env.update(extra)
    return env


def _disk_full() -> bool:
    """/job has (almost) no space left: the job ran into disk_bytes."""
    with contextlib.suppress(OSError):
        st = os.statvfs(JOB_ROOT)
        return st.f_bavail * st.f_frsize < DISK_FULL_SLACK
    return False


def _reap(pid: int) -> int | None:
    """Reap every finished process; return `pid`'s exit code once it is among them."""
    while True:
        try:
            done, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return None
        if done == 0:
            return None
        if done == pid:
            return os.waitstatus_to_exitcode(wait_status)


def _kill_everything() -> None:
    """SIGKILL every process but this one and reap until none is left. All of them are
    this init's descendants (orphans are reparented here), so ECHILD plus a kill(-1)
    that finds nobody means the job is gone."""
    while True:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            return
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _copy_returned(budget: int) -> str:
    """Copy /job/out to the runner's volume (get_archive cannot see a tmpfs): regular
    files up to `budget` bytes (one byte past it marks the overrun for the controller),
    directories, and symlinks as links (never followed; the controller refuses them by
    name). /job/out is read as the job's uid, the copy is written as root. The job is
    dead, so nothing moves under this walk. Returns what was skipped."""
    skipped: list[str] = []
    used, entries = 0, 0
    stack: list[tuple[str, int]] = [("", 0)]
    os.makedirs(RETURNED_DIR, exist_ok=True)
    while stack:
        rel, depth = stack.pop()
        try:
            with _as_job_user(), os.scandir(os.path.join(OUT_DIR, rel)) as scan:
                children = sorted(((e.name, e.path, e.stat(follow_symlinks=False).st_mode)
                                   for e in scan), key=lambda c: c[0])
        except OSError as exc:
            skipped.append(f"{rel or '.'} ({exc.strerror})")
            continue
        for entry_name, path, mode in children:
            entries += 1
            if entries > MAX_RETURNED_ENTRIES:
                return f"/job/out has more than {MAX_RETURNED_ENTRIES} entries; the rest " \
                       "was not returned"
            name = os.path.join(rel, entry_name)
            target = os.path.join(RETURNED_DIR, name)
            try:
                if stat.S_ISDIR(mode):
                    if depth + 1 >= MAX_RETURNED_DEPTH:
                        skipped.append(f"{name} (deeper than {MAX_RETURNED_DEPTH})")
                        continue
                    os.mkdir(target)
                    stack.append((name, depth + 1))
                elif stat.S_ISLNK(mode):
                    with _as_job_user():
                        link = os.readlink(path)
                    os.symlink(link, target)
                elif stat.S_ISREG(mode):
                    used += _copy_capped(path, target, budget - used + 1)
                    if used > budget:
                        return ""
                else:
                    skipped.append(f"{name} (not a regular file)")
            except OSError as exc:
                skipped.append(f"{name} ({exc.strerror})")
    return "not returned: " + ", ".join(skipped[:20]) if skipped else ""


def _copy_capped(src: str, dst: str, limit: int) -> int:
    with _as_job_user():
        fd = os.open(src, _NOFOLLOW)
    try:
        with open(dst, "wb") as out:
            copied = 0
            while copied < limit:
                chunk = os.read(fd, min(1 << 20, limit - copied))
                if not chunk:
                    break
                out.write(chunk)
                copied += len(chunk)
            return copied
    finally:
        os.close(fd)


def _keep_only_runner_caps() -> None:
    """Once the job has started, the runner needs only KILL and SETUID: empty the
    bounding set of the rest (needs SETPCAP, so first), then set permitted = effective
    = KEPT_CAPS and inheritable = none. Whatever runs in this process afterwards holds
    nothing more."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(64):
        if cap in KEPT_CAPS:
            continue
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            if ctypes.get_errno() == errno.EINVAL:  # past the last capability
                break
            raise OSError(ctypes.get_errno(), "cannot drop capability bounding set")

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    mask = sum(1 << cap for cap in KEPT_CAPS)
    data = (Data * 2)()
    data[0].effective = data[0].permitted = mask
    if libc.capset(ctypes.byref(Header(LINUX_CAPABILITY_VERSION_3, 0)), data) != 0:
        raise OSError(ctypes.get_errno(), "cannot drop the runner's capabilities")


def run(job: dict[str, Any]) -> dict[str, Any]:
    disk_bytes = int(job["disk_bytes"])
    nproc = int(job["nproc"]) if job.get("nproc") else None
    failed = _prepare()
    if failed:
        return {"status": "output_limit", "exit_code": None, "signal": None, "detail": failed}
    started = time.monotonic()
    try:
        child = subprocess.Popen(
            list(job["command"]), cwd=WORK_DIR, env=_child_env(job), start_new_session=True,
            preexec_fn=lambda: _start_child(disk_bytes, nproc))
    except (OSError, subprocess.SubprocessError) as exc:
        return {"status": "error", "exit_code": 127, "signal": None,
                "detail": f"cannot start command {job['command'][0]!r}: {exc}"}
    _keep_only_runner_caps()

    # Forward a polite stop to the job; the controller follows up with SIGKILL.
    signal.signal(signal.SIGTERM, lambda *_: _kill(-1, signal.SIGTERM))
    disk_full = False
    next_disk_check = 0.0
    code: int | None = None
    while code is None:
        code = _reap(child.pid)
        if time.monotonic() >= next_disk_check:
            disk_full = disk_full or _disk_full()
            next_disk_check = time.monotonic() + DISK_POLL_SECONDS
        if code is None:
            time.sleep(0.05)
    # Nothing of the job may outlive its main process: daemons, stray workers, all.
    _kill_everything()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    child.returncode = code
    disk_full = disk_full or _disk_full()
    sig = -code if code < 0 else None
    status = "ok" if code == 0 else "error"
    detail = ""
    if disk_full:
        status, detail = "output_limit", f"the job filled its disk (disk_bytes={disk_bytes})"
    with _as_job_user():
        exception, metrics = _job_reports(child.pid)
    skipped = _copy_returned(int(job.get("returned_file_bytes", 0)))
    return {
        "status": status,
        "exit_code": 128 + sig if sig else code,
        "signal": sig,
        "exception": exception,
        "metrics": metrics,
        "detail": "; ".join(d for d in (detail, skipped) if d),
        "run_seconds": time.monotonic() - started,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
    }


def _protect_self() -> None:
    """Non-dumpable (PR_SET_DUMPABLE = 4): no /proc access even for a same-uid process."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)


def _wait_for_job(idle_seconds: float) -> bool:
    """A pooled runner (controller/sandbox/warm_pool.py): set up, it waits until the
    controller has placed the job (the go file comes last); False if none came within
    `idle_seconds` (the container then ends with no result, and is removed)."""
    deadline = time.monotonic() + idle_seconds
    while not os.path.lexists(GO_FILE):
        if time.monotonic() >= deadline:
            return False
        time.sleep(GO_POLL_SECONDS)
    return True


def main() -> int:
    _protect_self()
    if len(sys.argv) == 3 and sys.argv[1] == "--pooled" and \
            not _wait_for_job(float(sys.argv[2])):
        return 0
    job = _read_json_at(None, JOB_FILE)
    if not isinstance(job, dict) or "command" not in job:
        result: dict[str, Any] = {"status": "error", "exit_code": 2, "detail": "bad job file"}
    else:
        result = run(job)
    tmp = RESULT_FILE + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    os.replace(tmp, RESULT_FILE)
    return int(result.get("exit_code") or 0)


if __name__ == "__main__":
    sys.exit(main())
