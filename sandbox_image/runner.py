"""In-container runner: runs one job's command and always writes one result file.

Runs as the container's PID 1. It starts the job as a child in its own process group,
reaps every orphan (the init's duty), watches the disk the job writes, and when the
child ends writes
/job/.bilevel/result.json with the exit status, the uncaught Python exception as
structured frames (recorded by sitecustomize.py in the child) and the metrics JSON the
job wrote to $BILEVEL_METRICS. As PID 1 it ignores signals from inside the container,
and it makes itself non-dumpable so the job can neither kill nor ptrace it. Its result
is still untrusted by the controller: parsed as size-capped JSON; timeouts, OOM and
floods are classified by the controller itself.

Standard library only, so it runs in any image with Python 3.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import time
from typing import Any

STATE_DIR = "/job/.bilevel"
JOB_FILE = f"{STATE_DIR}/job.json"
RESULT_FILE = f"{STATE_DIR}/result.json"
METRICS_FILE = f"{STATE_DIR}/metrics.json"
EXCEPTION_DIR = f"{STATE_DIR}/exceptions"
WORK_DIR = "/job/work"
HOOK_DIR = "/opt/bilevel/hook"
MAX_JSON_BYTES = 1 << 20
DISK_POLL_SECONDS = 0.5


def _read_json(path: str) -> Any:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_JSON_BYTES + 1)
    except OSError:
        return None
    if len(data) > MAX_JSON_BYTES:
        return {"__error__": f"{path} exceeds {MAX_JSON_BYTES} bytes"}
    try:
        return json.loads(data)
    except ValueError as exc:
        return {"__error__": f"{path} is not valid JSON: {exc}"}


def _disk_usage(root: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root, onerror=lambda _e: None):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def _exception_file(pid: int) -> str:
    """The child's own record, else the newest one (the command may be a shell)."""
    own = os.path.join(EXCEPTION_DIR, f"{pid}.json")
    if os.path.exists(own):
        return own
    try:
        entries = [os.path.join(EXCEPTION_DIR, n) for n in os.listdir(EXCEPTION_DIR)]
    except OSError:
        return own
    return max(entries, key=os.path.getmtime) if entries else own


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _reap_until(pid: int | None) -> int | None:
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


def _protect_self() -> None:
    """Make this process non-dumpable: same-uid jobs can then not ptrace it or read
    its /proc entries (PR_SET_DUMPABLE = 4)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)


def _child_env(job: dict[str, Any]) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": WORK_DIR,
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": HOOK_DIR,
        "BILEVEL_METRICS": METRICS_FILE,
        "BILEVEL_EXCEPTION_DIR": EXCEPTION_DIR,
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


def _limit_child(disk_bytes: int, nproc: int | None) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (disk_bytes, disk_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if nproc:  # only under gVisor, where the count is per sandbox (see hardening.py)
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


def run(job: dict[str, Any]) -> dict[str, Any]:
    disk_bytes = int(job["disk_bytes"])
    nproc = int(job["nproc"]) if job.get("nproc") else None
    os.makedirs(EXCEPTION_DIR, exist_ok=True)
    started = time.monotonic()
    try:
        child = subprocess.Popen(
            list(job["command"]),
            cwd=WORK_DIR,
            env=_child_env(job),
            start_new_session=True,
            preexec_fn=lambda: _limit_child(disk_bytes, nproc),
        )
    except OSError as exc:
        return {"status": "error", "exit_code": 127, "signal": None,
                "detail": f"cannot start command {job['command'][0]!r}: {exc}"}

    # Forward a polite stop to the job; the controller follows up with SIGKILL.
    signal.signal(signal.SIGTERM, lambda *_: _kill_group(child.pid, signal.SIGTERM))
    status, detail = "", ""
    next_disk_check = 0.0
    code: int | None = None
    while code is None:
        code = _reap_until(child.pid)
        now = time.monotonic()
        if code is None and now >= next_disk_check:
            used = _disk_usage("/job")
            if used > disk_bytes:
                status, detail = "output_limit", f"job wrote {used} bytes, over disk_bytes"
                _kill_group(child.pid, signal.SIGKILL)
            next_disk_check = now + DISK_POLL_SECONDS
        if code is None:
            time.sleep(0.05)
    # Whatever the job left in its process group (daemons, stray workers) goes too.
    _kill_group(child.pid, signal.SIGKILL)
    _reap_until(None)
    child.returncode = code
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)

    sig = -code if code < 0 else None
    if not status:
        status = "ok" if code == 0 else "error"
    exception = _read_json(_exception_file(child.pid))
    metrics = _read_json(METRICS_FILE)
    return {
        "status": status,
        "exit_code": 128 + sig if sig else code,
        "signal": sig,
        "exception": exception,
        "metrics": metrics,
        "detail": detail,
        "run_seconds": time.monotonic() - started,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
    }


def main() -> int:
    _protect_self()
    job = _read_json(JOB_FILE)
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
