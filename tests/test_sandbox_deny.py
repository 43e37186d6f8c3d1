"""Attacks an untrusted job might try, each contained, under runc and under gVisor.

Each test asserts the classified status or the blocked effect, then that the executor
still runs a trivial job (`assert_healthy`). Network tests aim only at listeners this
test starts on this machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap

import pytest

from controller.sandbox.backend import SandboxBackend
from controller.sandbox.spec import JobResult, JobSpec, Limits, Status

pytestmark = [pytest.mark.docker, pytest.mark.parametrize("runtime", ["runc", "runsc"])]


def run_py(executor: SandboxBackend, source: str, runtime: str, **limits: float) -> JobResult:
    spec = JobSpec(files={"main.py": textwrap.dedent(source).encode()},
                   command=("python3", "main.py"), runtime=runtime,
                   limits=Limits(**{"wall_seconds": 30.0, **limits}))  # type: ignore[arg-type]
    return executor.run_job(spec)


def assert_healthy(executor: SandboxBackend, runtime: str) -> None:
    result = run_py(executor, "print('still fine')", runtime)
    assert result.status is Status.OK, result
    assert result.stdout.strip() == "still fine"


def json_line(result: JobResult) -> dict[str, object]:
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"job printed no JSON: {result}"
    parsed: dict[str, object] = json.loads(lines[-1])
    return parsed


def test_deny_fork_bomb(executor: SandboxBackend, runtime: str) -> None:
    result = run_py(executor, """
        import json, os, time
        started = 0
        error = None
        for _ in range(2000):
            try:
                pid = os.fork()
            except OSError as exc:
                error = type(exc).__name__
                break
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            started += 1
        print(json.dumps({"started": started, "error": error}))
    """, runtime, pids=64)
    report = json_line(result)
    assert report["error"] is not None, "fork never failed: the pids limit is missing"
    assert isinstance(report["started"], int) and report["started"] < 64
    assert result.status is Status.OK  # the job ended; its sleeping children were reaped
    assert_healthy(executor, runtime)


# A bomb whose every process forks forever: held at its process limit until the wall.
ENDLESS_FORK_BOMB = """
    import os
    while True:
        try:
            os.fork()
        except OSError:
            pass
"""


def test_deny_endless_fork_bomb_is_a_timeout(executor: SandboxBackend, runtime: str) -> None:
    """Under gVisor the sentry needs host tasks of its own while the bomb churns; it
    used to run out of them (exit 2) and the bomb came back as a sandbox failure."""
    result = run_py(executor, ENDLESS_FORK_BOMB, runtime, pids=64, wall_seconds=10)
    assert result.status is Status.TIMEOUT, result
    assert_healthy(executor, runtime)


def test_deny_memory_bomb(executor: SandboxBackend, runtime: str) -> None:
    result = run_py(executor, """
        hog = []
        while True:
            hog.append(bytearray(16 << 20))
    """, runtime, memory_bytes=256 << 20, tmp_bytes=16 << 20)
    assert result.status is Status.OOM, result
    assert_healthy(executor, runtime)


def test_deny_filling_tmp(executor: SandboxBackend, runtime: str) -> None:
    result = run_py(executor, """
        import json, os
        written = 0
        try:
            with open("/tmp/fill", "wb") as f:
                while written < (1 << 30):
                    f.write(b"x" * (1 << 20))
                    f.flush()
                    written += 1 << 20
            error = None
        except OSError as exc:
            error = exc.errno
        print(json.dumps({"written": written, "error": error}))
    """, runtime, tmp_bytes=16 << 20)
    report = json_line(result)
    assert report["error"] is not None
    assert isinstance(report["written"], int) and report["written"] <= 16 << 20
    assert_healthy(executor, runtime)


def test_deny_filling_job_disk(executor: SandboxBackend, runtime: str) -> None:
    result = run_py(executor, """
        import time
        for i in range(10_000):
            with open(f"/job/work/blob{i}", "wb") as f:
                f.write(b"x" * (1 << 20))
    """, runtime, disk_bytes=32 << 20)
    assert result.status is Status.OUTPUT_LIMIT, result
    assert "disk_bytes" in result.detail
    assert_healthy(executor, runtime)


def test_deny_output_flood(executor: SandboxBackend, runtime: str) -> None:
    result = run_py(executor, """
        import sys
        print("first line")
        while True:
            sys.stdout.write("flood " * 1000 + "\\n")
    """, runtime, output_bytes=256 << 10)
    assert result.status is Status.OUTPUT_LIMIT, result
    assert result.stdout_head.startswith("first line")
    assert len(result.stdout_head) + len(result.stdout_tail) <= 64 << 10
    assert_healthy(executor, runtime)


def test_deny_ignoring_sigterm_past_deadline(executor: SandboxBackend, runtime: str) -> None:
    result = run_py(executor, """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("sleeping", flush=True)
        time.sleep(600)
    """, runtime, wall_seconds=3)
    assert result.status is Status.TIMEOUT, result
    assert result.timings.run_s < 3 + 10
    assert_healthy(executor, runtime)


def _host_addresses() -> list[str]:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True,
                         check=True).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines()]


def test_deny_network(executor: SandboxBackend, runtime: str,
                      listener: tuple[int, list[str]]) -> None:
    port, accepted = listener
    targets = sorted(set(_host_addresses()))
    assert any(a.startswith("172.") for a in targets), "expected the docker bridge gateway"
    result = run_py(executor, f"""
        import json, socket
        outcomes = {{}}
        for host in {targets!r}:
            s = socket.socket()
            s.settimeout(2)
            try:
                s.connect((host, {port}))
                outcomes[host] = "connected"
            except OSError as exc:
                outcomes[host] = type(exc).__name__
            finally:
                s.close()
        interfaces = [name for _, name in socket.if_nameindex()]
        print(json.dumps({{"outcomes": outcomes, "interfaces": interfaces}}))
    """, runtime)
    report = json_line(result)
    assert report["interfaces"] == ["lo"]
    outcomes = report["outcomes"]
    assert isinstance(outcomes, dict)
    assert "connected" not in outcomes.values(), outcomes
    assert accepted == []
    assert_healthy(executor, runtime)


def test_deny_reading_controller_environment(executor: SandboxBackend, runtime: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-planted-secret-4242")
    assert os.environ["ANTHROPIC_API_KEY"] == "sk-planted-secret-4242"
    result = run_py(executor, """
        import os, glob
        print(dict(os.environ))
        for path in glob.glob("/proc/*/environ"):
            try:
                print(open(path, "rb").read())
            except OSError:
                pass
    """, runtime)
    assert result.status is Status.OK
    assert "sk-planted-secret" not in result.stdout + result.stderr
    assert "ANTHROPIC_API_KEY" not in result.stdout


def test_deny_writing_outside_writable_paths(executor: SandboxBackend, runtime: str) -> None:
    result = run_py(executor, """
        import json
        outcomes = {}
        for path in ["/evil", "/usr/evil", "/etc/passwd", "/opt/bilevel/runner.py",
                     "/opt/venv/bin/python3", "/home/evil", "/var/evil", "/dev/shm/../evil"]:
            try:
                with open(path, "a") as f:
                    f.write("pwned")
                outcomes[path] = "written"
            except OSError as exc:
                outcomes[path] = exc.strerror
        print(json.dumps(outcomes))
    """, runtime)
    outcomes = json_line(result)
    assert "written" not in outcomes.values(), outcomes
    assert_healthy(executor, runtime)


def test_deny_mount_unshare_and_capabilities(executor: SandboxBackend, runtime: str) -> None:
    result = run_py(executor, """
        import ctypes, json, os
        libc = ctypes.CDLL(None, use_errno=True)
        out = {"kernel": os.uname().release, "uid": os.getuid()}
        status = open("/proc/self/status").read()
        out["caps"] = {l.split(":")[0]: l.split()[1] for l in status.splitlines()
                       if l.startswith(("CapEff", "CapPrm", "CapBnd"))}
        out["no_new_privs"] = [l.split()[1] for l in status.splitlines()
                               if l.startswith("NoNewPrivs")]
        rc = libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)
        out["mount"] = (rc, os.strerror(ctypes.get_errno()))
        CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x00020000
        rc = libc.unshare(CLONE_NEWNS)
        out["unshare_mount"] = (rc, os.strerror(ctypes.get_errno()))
        rc = libc.unshare(CLONE_NEWUSER)
        out["unshare_user"] = (rc, os.strerror(ctypes.get_errno()))
        print(json.dumps(out))
    """, runtime)
    report = json_line(result)
    assert report["uid"] == 10001
    caps = report["caps"]
    assert isinstance(caps, dict)
    assert caps["CapEff"] == caps["CapPrm"] == caps["CapBnd"] == "0000000000000000"
    assert report["mount"][0] == -1  # type: ignore[index]
    if runtime == "runc":
        assert report["no_new_privs"] == ["1"]
        assert report["unshare_mount"][0] == -1  # type: ignore[index]
        assert report["unshare_user"][0] == -1  # type: ignore[index]
    else:
        # gVisor implements namespaces inside its own kernel (the sentry): a new one
        # grants nothing on the host. The job is talking to that kernel, not ours.
        assert report["kernel"] == "4.4.0"
    assert_healthy(executor, runtime)


def test_deny_ptrace_of_the_runner(executor: SandboxBackend, runtime: str) -> None:
    result = run_py(executor, """
        import ctypes, json, os
        libc = ctypes.CDLL(None, use_errno=True)
        PTRACE_ATTACH = 16
        # PID 1 is the runner that reports the result; it runs as another uid.
        rc = libc.ptrace(PTRACE_ATTACH, 1, None, None)
        err = os.strerror(ctypes.get_errno())
        print(json.dumps({"rc": rc, "err": err}), flush=True)
        try:
            os.kill(1, 9)
        except OSError:
            pass
    """, runtime)
    report = json_line(result)
    assert report["rc"] == -1, report
    # The runner is root and the job has no CAP_KILL: the SIGKILL is refused under
    # both runtimes (gVisor would deliver it to a same-uid init).
    assert result.status is Status.OK, result
    assert_healthy(executor, runtime)


def test_deny_setuid_escalation(setuid_executor: SandboxBackend, setuid_image: str,
                                runtime: str) -> None:
    # setuid_executor allows setuid_image, with a setuid-root copy of `id` (conftest.py).
    spec = JobSpec(files={}, command=("/usr/local/bin/suid-id", "-u"), runtime=runtime,
                   image=setuid_image)
    result = setuid_executor.run_job(spec)
    assert result.status is Status.OK, result
    assert result.stdout.strip() == "10001"


def test_deny_returned_symlinks(executor: SandboxBackend, runtime: str) -> None:
    result = run_py(executor, """
        import os
        open("/job/out/ok.txt", "w").write("fine")
        os.symlink("/etc/passwd", "/job/out/passwd")
        os.symlink("/etc", "/job/out/etcdir")
        os.link("/job/out/ok.txt", "/job/out/hard.txt")
    """, runtime)
    assert result.status is Status.OK, result
    assert set(result.files) <= {"ok.txt", "hard.txt"}
    assert result.files.get("ok.txt") == b"fine" or result.files.get("hard.txt") == b"fine"
    assert "root:" not in b"".join(result.files.values()).decode()
    assert "passwd (symlink" in result.detail and "etcdir (symlink" in result.detail
