"""Attacks on the trusted runner (PID 1) and on what it reports, under runc and gVisor:
hiding CPU time in orphans, forging the result, signalling the runner, hiding disk use.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest

from controller.sandbox.backend import SandboxBackend
from controller.sandbox.spec import JobResult, JobSpec, Limits, Status

pytestmark = [pytest.mark.docker, pytest.mark.parametrize("runtime", ["runc", "runsc"])]


def run_py(executor: SandboxBackend, source: str, runtime: str, **limits: float) -> JobResult:
    spec = JobSpec(files={"main.py": textwrap.dedent(source).encode()},
                   command=("python3", "main.py"), runtime=runtime,
                   limits=Limits(**{"wall_seconds": 60.0, **limits}))  # type: ignore[arg-type]
    return executor.run_job(spec)


def json_line(result: JobResult) -> dict[str, Any]:
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"job printed no JSON: {result}"
    parsed: dict[str, Any] = json.loads(lines[-1])
    return parsed


def test_deny_hiding_cpu_time_in_an_orphan(executor: SandboxBackend, runtime: str) -> None:
    """CPU burnt by a double-forked orphan counts: the runner reaps it and measures
    every reaped process (getrusage(RUSAGE_CHILDREN))."""
    result = run_py(executor, """
        import os, time
        def burn(seconds):
            while time.process_time() < seconds:
                pass
        read, write = os.pipe()
        if os.fork() == 0:
            if os.fork() == 0:
                os.close(read)
                burn(1.0)
                os.write(write, b"x")
                os._exit(0)
            os._exit(0)
        os.close(write)
        burn(0.5)
        os.read(read, 1)
    """, runtime)
    assert result.status is Status.OK, result
    assert result.cpu_seconds is not None
    assert result.cpu_seconds >= 1.5


# A job hiding its writes from a walk: a directory it can write but nobody can list.
HIDDEN_DISK_FILL = """
    import json, os
    os.mkdir("/job/work/hidden")
    os.chmod("/job/work/hidden", 0o300)
    written, error = 0, None
    try:
        for i in range(96):
            with open(f"/job/work/hidden/blob{i}", "wb") as f:
                f.write(b"x" * (1 << 20))
            written += 1 << 20
    except OSError as exc:
        error = exc.strerror
    print(json.dumps({"written": written, "error": error}), flush=True)
"""


def test_deny_hiding_disk_use_in_a_0300_directory(executor: SandboxBackend,
                                                  runtime: str) -> None:
    """Before: the runner walked /job as the job's uid and saw nothing in the 0300
    directory (1.4 GB written under a 256 MiB limit). Now /job is a tmpfs of disk_bytes."""
    result = run_py(executor, HIDDEN_DISK_FILL, runtime, disk_bytes=32 << 20)
    report = json_line(result)
    assert report["error"] == "No space left on device", report
    assert isinstance(report["written"], int) and report["written"] <= 32 << 20
    assert result.status is Status.OUTPUT_LIMIT, result
    assert "disk_bytes" in result.detail


FORGED = {"status": "ok", "exit_code": 0, "signal": None, "metrics": {"val_bpb": 0.01},
          "detail": "", "exception": None}

# The main process exits 3; a double-forked, SIGTERM-ignoring daemon then keeps writing
# a forged result where the runner writes its own, and forged metrics a little later.
DAEMON_FORGERY = """
    import json, os, signal, time
    FORGED = FORGED_LITERAL
    read, write = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.close(write)
            os.read(read, 1)  # returns when the main process is gone
            start = time.monotonic()
            while time.monotonic() - start < 20:
                for folder in ("/bilevel", "/job/.bilevel"):
                    try:
                        with open(folder + "/forged.tmp", "w") as f:
                            json.dump(FORGED, f)
                        os.replace(folder + "/forged.tmp", folder + "/result.json")
                    except OSError:
                        pass
                if time.monotonic() - start > 2:
                    with open(os.environ["BILEVEL_METRICS"], "w") as f:
                        json.dump(FORGED["metrics"], f)
        os._exit(0)
    os.close(read)
    time.sleep(0.5)
    raise SystemExit(3)
""".replace("FORGED_LITERAL", repr(FORGED))

# Pre-write the result and make the runner's temporary name a directory, so that the
# old runner crashed writing its own and left the forged one.
PREWRITTEN_FORGERY = """
    import json, os
    FORGED = FORGED_LITERAL
    outcome = {}
    for folder in ("/bilevel", "/job/.bilevel"):
        try:
            with open(folder + "/result.json", "w") as f:
                json.dump(FORGED, f)
            os.mkdir(folder + "/result.json.tmp")
            outcome[folder] = "written"
        except OSError as exc:
            outcome[folder] = exc.strerror
    print(json.dumps(outcome), flush=True)
    raise SystemExit(5)
""".replace("FORGED_LITERAL", repr(FORGED))


def test_deny_forging_the_result_from_a_daemon(executor: SandboxBackend,
                                               runtime: str) -> None:
    """Before: the daemon outlived the process-group kill and replaced the result (ok,
    exit 0, its metrics). Now every job process dies before the runner reads anything,
    and the result is in a root-only directory."""
    result = run_py(executor, DAEMON_FORGERY, runtime)
    assert result.status is Status.ERROR, result
    assert result.exit_code == 3
    assert result.metrics == {}
    assert result.timings.run_s < 15  # the daemon did not keep the container alive


def test_deny_forging_the_result_by_prewriting_it(executor: SandboxBackend,
                                                  runtime: str) -> None:
    result = run_py(executor, PREWRITTEN_FORGERY, runtime)
    report = json_line(result)
    assert report["/bilevel"] == "Permission denied", report
    assert result.status is Status.ERROR, result
    assert result.exit_code == 5
    assert result.metrics == {}


# Stop, kill and trace PID 1 (the runner), then check it still runs.
SIGNAL_THE_RUNNER = """
    import ctypes, json, os, signal
    libc = ctypes.CDLL(None, use_errno=True)
    out = {}
    for name in ("SIGSTOP", "SIGKILL", "SIGTERM"):
        try:
            os.kill(1, getattr(signal, name))
            out[name] = "sent"
        except OSError as exc:
            out[name] = exc.strerror
    out["ptrace"] = libc.ptrace(16, 1, None, None), os.strerror(ctypes.get_errno())
    try:
        open("/proc/1/mem", "rb").read(1)
        out["mem"] = "read"
    except OSError as exc:
        out["mem"] = exc.strerror
    state = [l for l in open("/proc/1/status") if l.startswith("State:")]
    out["state"] = state[0].split()[1] if state else "?"
    if out["SIGSTOP"] == "sent":
        os.kill(1, signal.SIGCONT)
    print(json.dumps(out), flush=True)
"""


def test_deny_signalling_the_runner(executor: SandboxBackend, runtime: str) -> None:
    """Before, under gVisor, the job (same uid) could SIGKILL or SIGSTOP PID 1; a
    stopped runner stopped watching the job. Now the job is another uid without caps."""
    result = run_py(executor, SIGNAL_THE_RUNNER, runtime)
    report = json_line(result)
    assert report["SIGSTOP"] == report["SIGKILL"] == report["SIGTERM"] == \
        "Operation not permitted", report
    assert report["ptrace"] == [-1, "Operation not permitted"]
    assert report["mem"] in ("Permission denied", "Operation not permitted")
    assert report["state"] != "T"
    assert result.status is Status.OK, result
    assert result.exit_code == 0


def test_deny_runner_reading_through_links(executor: SandboxBackend, runtime: str) -> None:
    """The runner is root: what the job leaves for it to read (metrics, exception
    records, returned files) is opened without following links, so a link cannot make
    it read the runner's own files (here job.json) back to the job's submitter."""
    result = run_py(executor, """
        import os, shutil
        os.symlink("/bilevel/job.json", "/job/.bilevel/metrics.json")
        shutil.rmtree("/job/.bilevel/exceptions")
        os.symlink("/bilevel", "/job/.bilevel/exceptions")
        os.symlink("/bilevel/job.json", "/job/out/job.json")
        raise SystemExit(4)
    """, runtime)
    assert (result.status, result.exit_code) == (Status.ERROR, 4), result
    assert result.metrics == {} and result.exception is None and result.files == {}
    assert "metrics dropped" in result.detail and "symbolic links" in result.detail
    assert "command" not in repr(result)
