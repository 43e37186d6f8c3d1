"""`bilevel run` as a person sees it: in a real pseudo-terminal, its output read off a
terminal emulator's screen; piped, each trial once; read-only commands reach a running
controller through the state dir's lock file."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pyte
import pytest

from tests.test_cli_commands import bilevel
from tests.test_cli_serve_resume import bilevel_serve

pytestmark = pytest.mark.docker

COLUMNS, LINES = 140, 60


def in_terminal(*args: str, timeout: float = 240) -> tuple[int, list[str]]:
    """Run `bilevel ARGS` on a pty of COLUMNS x LINES; its exit status and final screen."""
    parent, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(COLUMNS),
           "LINES": str(LINES)}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", *args], stdin=child,
                            stdout=child, stderr=child, env=env, close_fds=True)
    os.close(child)
    screen = pyte.Screen(COLUMNS, LINES)
    stream = pyte.ByteStream(screen)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([parent], [], [], 1.0)
            if ready:
                try:
                    data = os.read(parent, 65536)
                except OSError:  # EIO: the child side closed
                    break
                if not data:
                    break
                stream.feed(data)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(parent)
    return code, [line.rstrip() for line in screen.display]


def test_a_run_in_a_terminal_shows_one_table_and_no_log(tmp_path: Path,
                                                          sandbox_image: str) -> None:
    code, screen = in_terminal("run", "--preset", "surrogate", "--trials", "3",
                               "--state-dir", str(tmp_path), "--image", sandbox_image,
                               "--namespace", "pytest-cli-tty")
    shown = "\n".join(screen)
    assert code == 0, shown
    titles = [line for line in screen if line.startswith("run run-") and
              line.endswith("  surrogate")]
    assert len(titles) == 1, shown  # each redraw replaced the last: no stacked copies
    assert sum(line.startswith("┏") for line in screen) == 1, shown  # one top border
    rows = [line.split("│") for line in screen if line.startswith("│")]
    assert [r[1].strip() for r in rows] == ["0", "1", "2", "3"], shown
    assert all(r[2].strip() in ("keep", "discard", "crash") for r in rows), shown
    for noise in ("controller listening", "shutting down", "[info", "stopped"):
        assert noise not in shown, f"{noise!r} on the screen:\n{shown}"
    assert "succeeded - trial budget of 3" in shown
    # The log went to the state dir instead.
    log = (tmp_path / "bilevel.log").read_text()
    assert '"controller listening"' in log and '"stopped"' in log


def test_piped_each_trial_prints_once_and_readers_reach_a_running_controller(
        tmp_path: Path, sandbox_image: str) -> None:
    local = ("--state-dir", str(tmp_path), "--image", sandbox_image, "--namespace",
             "pytest-cli-pipe")
    done = bilevel("run", "--preset", "surrogate", "--trials", "4", *local)
    assert done.returncode == 0, done.stderr
    trial_lines = [line for line in done.stderr.splitlines() if "trial " in line]
    assert [line.split()[1] for line in trial_lines] == ["0", "1", "2", "3", "4"], \
        done.stderr  # each trial once, nothing else names one
    assert "controller listening" not in done.stderr and "[info" not in done.stderr
    run_id = done.stdout.split(":")[0]

    # No controller holds the state dir: `runs` reads the store itself.
    listed = bilevel("runs", "--state-dir", str(tmp_path))
    assert listed.returncode == 0 and run_id in listed.stdout
    assert "connected to" not in listed.stderr

    with bilevel_serve(tmp_path, sandbox_image, "pytest-cli-pipe"):
        # Before: "in use by another controller (pid N)". Now it connects to that one.
        listed = bilevel("runs", "--state-dir", str(tmp_path))
        assert listed.returncode == 0, listed.stderr
        assert "connected to the controller holding" in listed.stderr
        assert run_id in listed.stdout and "succeeded" in listed.stdout
        tsv = bilevel("artifact", run_id, "results.tsv", "--state-dir", str(tmp_path))
        assert tsv.returncode == 0 and len(tsv.stdout.splitlines()) == 6
        detached = bilevel("run", "--detach", "--preset", "surrogate", "--trials", "1",
                           *local)
        assert detached.returncode == 0, detached.stderr  # it runs in that controller
        watched = bilevel("watch", detached.stdout.strip(), "--state-dir", str(tmp_path))
        assert watched.returncode == 0 and "succeeded" in watched.stdout, watched.stderr


def test_bad_flags_and_files_are_clear_errors_before_anything_starts(tmp_path: Path) -> None:
    state = ("--state-dir", str(tmp_path / "state"))
    for argv, message in ((("run", "--trials", "0"), "error: --trials: must be"),
                          (("run", "--preset", "nope"), "error: --preset: unknown preset"),
                          (("run", "--levels", "3"), "error: --levels:"),
                          (("run", "--detach", "--preset", "surrogate"),
                           "error: --detach needs a controller"),
                          (("exec", str(tmp_path / "missing.py")), "error: FILE")):
        done = bilevel(*argv, *state) if argv[0] == "run" else bilevel(*argv)
        assert done.returncode == 2, done
        assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "state").exists()  # nothing started, nothing written
    assert "--image" not in bilevel("runs", "--help").stdout  # a reader has no sandbox
