"""Stopping and resuming as a person does it, with real CLI subprocesses on a real
state dir and engine: Ctrl-C pauses a run and says how to continue it; `bilevel resume`
draws the run's history at once and then follows it live; a killed controller leaves its
run `waiting`, and no other command continues it unless asked; a finished run is not
resumed, and says so."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller.store.runs import RunStore
from tests.pty_session import PtySession, Screen
from tests.test_cli_commands import bilevel
from tests.test_cli_narrow_terminal import progress_line, trial_rows

pytestmark = pytest.mark.docker
TRIALS = 10  # margin: a warm pool runs a surrogate trial in ~0.3 s, so 4 ended before Ctrl-C
FAST = ("--final-seeds", "0")  # no end-of-run check: seconds saved, nothing lost here


def _local(tmp_path: Path, image: str, namespace: str) -> tuple[str, ...]:
    return ("--state-dir", str(tmp_path), "--image", image, "--namespace", namespace)


def _finished(state: Path, run_id: str) -> int:
    """Trials of `run_id` finished in the store (the baseline counts)."""
    store = RunStore(state / "bilevel.sqlite3")
    try:
        return store.get_run(run_id).trials_done
    finally:
        store.close()


def _squeezed(text: str) -> str:
    """Without whitespace: a line the terminal wrapped reads the same."""
    return "".join(text.split())


def _rows_done(screen: Screen, trials: int) -> bool:
    return sum(r[0].isdigit() for r in trial_rows(screen)) >= trials


def test_ctrl_c_pauses_and_resume_shows_the_history_at_once_then_goes_on_live(
        tmp_path: Path, sandbox_image: str) -> None:
    local = _local(tmp_path, sandbox_image, "pytest-cli-stop")
    first = PtySession(("run", "--preset", "surrogate", "--trials", str(TRIALS), *FAST,
                        *local))
    first.wait_for(lambda screen: _rows_done(screen, 3))  # the baseline and 2 trials
    first.interrupt()
    code, screen = first.finish(120)
    shown = "\n".join(screen)
    assert code == 130, shown
    run_id = next(w for w in shown.split() if w.startswith("run-")).strip("`;")
    assert _squeezed(f"interrupted: pausing run {run_id}; `bilevel resume {run_id}` "
                     "continues it") in _squeezed(shown), shown
    before = _finished(tmp_path, run_id)
    assert 3 <= before < TRIALS + 1

    listed = bilevel("runs", "--state-dir", str(tmp_path))
    assert listed.returncode == 0 and "paused" in listed.stdout, listed.stdout
    watched = bilevel("watch", run_id, "--state-dir", str(tmp_path))
    assert watched.returncode == 3, watched.stderr  # a paused run: exit 3, and how to go on
    assert "interrupted" in watched.stdout and f"bilevel resume {run_id}" in watched.stdout

    resumed = PtySession(("resume", run_id, *local))
    code, final = resumed.finish()
    shown = "\n".join(final)
    assert code == 0, shown
    assert _squeezed(f"succeeded - trial budget of {TRIALS} spent") in _squeezed(shown), shown
    # The history was drawn at once, as the first table on the screen: every trial
    # finished before the pause, and none of those the resumed run adds.
    tables = [f for f in resumed.frames if trial_rows(f.screen)]
    assert tables, shown
    history = [r[0] for r in trial_rows(tables[0].screen) if r[0].isdigit()]
    assert history == [str(i) for i in range(before)], "\n".join(tables[0].screen)
    assert progress_line(tables[0].screen).startswith(f"trials {before - 1}/{TRIALS}")
    seen = {r[0] for f in resumed.frames for r in trial_rows(f.screen) if r[0].isdigit()}
    assert seen == {str(i) for i in range(TRIALS + 1)}, shown  # then the new ones, live
    assert _finished(tmp_path, run_id) == TRIALS + 1

    again = bilevel("resume", run_id, *local)
    assert again.returncode == 2, again.stderr
    assert f"run {run_id} has already finished (succeeded): there is nothing to resume" \
        in again.stderr and "FAILED_PRECONDITION" not in again.stderr


def test_a_killed_run_waits_and_only_resume_continues_it(
        tmp_path: Path, sandbox_image: str) -> None:
    local = _local(tmp_path, sandbox_image, "pytest-cli-kill")
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--preset",
                             "surrogate", "--trials", str(TRIALS), *FAST, *local],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stderr is not None
    run_id = ""
    for line in proc.stderr:  # piped: one line per trial
        run_id = run_id or next((w for w in line.split() if w.startswith("run-")), "")
        if line.startswith("trial   2"):
            break
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its in-process controller
    proc.wait(30)
    before = _finished(tmp_path, run_id)
    assert run_id and 3 <= before < TRIALS + 1

    listed = bilevel("runs", "--state-dir", str(tmp_path))
    assert "waiting" in listed.stdout and "`bilevel resume RUN` continues it" in \
        listed.stderr, listed.stdout + listed.stderr

    # An unrelated run on the same state dir leaves the waiting run alone.
    other = bilevel("run", "--preset", "surrogate", "--trials", "1", *FAST, *local)
    assert other.returncode == 0, other.stderr
    assert run_id not in other.stdout + other.stderr
    time.sleep(1.0)
    assert _finished(tmp_path, run_id) == before
    assert "waiting" in bilevel("runs", "--state-dir", str(tmp_path)).stdout

    resumed = bilevel("resume", run_id, *local)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming run {run_id} (interrupted: no controller was running it)" in \
        resumed.stderr
    trial_lines = [line.split()[1] for line in resumed.stderr.splitlines()
                   if line.startswith("trial ")]
    assert trial_lines == [str(i) for i in range(TRIALS + 1)], resumed.stderr
    assert f"{run_id}: succeeded" in resumed.stdout
