"""What `bilevel run` shows, read off a terminal emulator (pyte) as a person would see
it: one table that grows, no second copy of its title or border, log lines above it
and never inside; piped, one line per trial."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyte
import pytest
import structlog
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console

from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.commands import live_view
from controller.commands.live_view import RunView
from controller.logging import configure_logging

WIDTH, HEIGHT = 110, 60
REDRAWN = 0.4  # events that arrive at once are drawn by the view's next redraw (4/s)


def screen_of(output: str, height: int = HEIGHT) -> list[str]:
    """The screen after `output`, with the tty's newline translation (onlcr)."""
    screen = pyte.Screen(WIDTH, height)
    pyte.Stream(screen).feed(output.replace("\r\n", "\n").replace("\n", "\r\n"))
    return [line.rstrip() for line in screen.display]


def _run(trials: int = 4) -> rpb.Run:
    return rpb.Run(id="run-live", state=rpb.RUN_STATE_RUNNING, request=rpb.CreateRunRequest(
        task=rpb.TaskSpec(preset="surrogate"), budgets=rpb.Budgets(max_trials=trials)))


def _at(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def trial_events(trial: int, val: float, status: rpb.TrialStatus,
                 start: float) -> list[rpb.RunEvent]:
    started = rpb.RunEvent(time=_at(start), trial_started=rpb.RunEvent.TrialStarted(
        trial=trial, attempt=1))
    finished = rpb.RunEvent(time=_at(start + 2), trial_finished=rpb.RunEvent.TrialFinished(
        trial=trial, status=status, loss=val, description=f"change number {trial}",
        started_at=_at(start), ended_at=_at(start + 2)))
    events = [started, finished]
    if status == rpb.TRIAL_STATUS_KEEP:
        events.append(rpb.RunEvent(new_best=rpb.RunEvent.NewBest(trial=trial, loss=val)))
    return events


RESULTS = [(1.50, rpb.TRIAL_STATUS_KEEP), (1.40, rpb.TRIAL_STATUS_KEEP),
           (1.45, rpb.TRIAL_STATUS_DISCARD), (1.30, rpb.TRIAL_STATUS_KEEP)]


@pytest.fixture
def verbose_log() -> Iterator[None]:
    configure_logging("console", "info", stderr_level="info")  # as with --verbose
    yield
    structlog.reset_defaults()  # the set-up is process-wide: leave other tests theirs


@pytest.mark.usefixtures("verbose_log")
def test_the_live_view_is_one_table_that_grows_with_logs_above_it() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=WIDTH, height=HEIGHT,
                      color_system=None)
    view = RunView(_run(), console)
    start = time.time() - 60
    with view.live():
        for trial, (val, status) in enumerate(RESULTS[:3]):
            for event in trial_events(trial, val, status, start + 10 * trial):
                view.update(event)
        structlog.get_logger("test").warning("a log line from the controller", trial=2)
        view.update(rpb.RunEvent(time=_at(time.time() - 5), trial_started=rpb.RunEvent.
                                 TrialStarted(trial=3, attempt=1)))
        time.sleep(REDRAWN)
        during = screen_of(out.getvalue())
        for event in trial_events(3, *RESULTS[3], start + 30)[1:]:
            view.update(event)
    after = screen_of(out.getvalue())

    # While it runs: one title, one top border, trial rows 0-2, trial 3's elapsed, an ETA.
    assert sum("run run-live" in line for line in during) == 1, "\n".join(during)
    assert sum(line.startswith("┏") for line in during) == 1, "\n".join(during)
    rows = [line for line in during if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows] == ["0", "1", "2"]
    assert "keep" in rows[1] and "1.400000" in rows[1] and "discard" in rows[2]
    assert "1.400000" in rows[2].split("│")[4]  # best after trial 2: still trial 1's
    line = next(line for line in during if "trials 2/4" in line)
    assert "running trial 3 5s" in line and "ETA" in line and "best 1.400000" in line
    # The log line sits above the table, once, never between its borders.
    logs = [i for i, line in enumerate(during) if "a log line from the controller" in line]
    top = next(i for i, line in enumerate(during) if line.startswith("┏"))
    assert len(logs) == 1 and logs[0] < top, "\n".join(during)

    # After it: the full table, printed once, with all five rows... of four trials.
    assert sum("run run-live" in line for line in after) == 1, "\n".join(after)
    assert sum(line.startswith("┏") for line in after) == 1
    final = [line.split("│") for line in after if line.startswith("│")]
    assert [r[1].strip() for r in final] == ["0", "1", "2", "3"]
    assert final[3][4].strip() == "1.300000" and final[3][5].strip() == "2.0"
    assert sum("a log line from the controller" in line for line in after) == 1


def test_a_long_run_keeps_the_view_within_the_screen() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=WIDTH, height=20,
                      color_system=None)
    view = RunView(_run(40), console)
    with view.live():
        for trial in range(30):
            for event in trial_events(trial, 2.0 - trial / 100, rpb.TRIAL_STATUS_KEEP,
                                      1000.0 + trial):
                view.update(event)
        time.sleep(REDRAWN)
        during = screen_of(out.getvalue(), height=20)
    assert sum(line.startswith("┏") for line in during) == 1, "\n".join(during)
    hidden = next(line for line in during if " earlier" in line)
    shown = [line.split("│")[1].strip() for line in during
             if line.startswith("│") and line.split("│")[1].strip()]
    assert int(hidden.split("...")[1].split()[0]) + len(shown) == 30, "\n".join(during)
    assert shown[-1] == "29" and len(shown) >= 10  # the latest rows, as many as fit
    assert "trials 29/40" in during[-2] or "trials 29/40" in during[-1]  # never cut off
    final = [line for line in screen_of(out.getvalue(), height=80) if line.startswith("│")]
    assert len(final) == 30  # the table left behind has every trial


def test_piped_each_trial_is_one_line() -> None:
    out = io.StringIO()
    view = RunView(_run(), Console(file=out, force_terminal=False, width=200))
    with view.live():
        for trial, (val, status) in enumerate(RESULTS):
            for event in trial_events(trial, val, status, 100.0 * trial):
                view.update(event)
        view.update(rpb.RunEvent(run_finished=rpb.RunEvent.RunFinished(
            state=rpb.RUN_STATE_SUCCEEDED)))
    lines = out.getvalue().splitlines()
    assert len(lines) == 4, lines
    for trial, line in enumerate(lines):
        assert line.startswith(f"trial {trial:>3}  ")
        assert f"change number {trial}" in line and "\x1b" not in line
    assert "best 1.400000" in lines[2] and "best 1.300000" in lines[3]  # best after it


# A description is an LLM's text and a mechanism's detail its own output: hostile. On a
# terminal an ESC sequence in it would clear the screen, move the cursor to overwrite
# rows, or retitle the window.
HOSTILE = "\x1b[2J\x1b[H\x1b]0;owned\x07FAKE ROW keep 0.000001\x1b[1A\u202eevil"


def _hostile_screen() -> tuple[list[str], str]:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=WIDTH, height=HEIGHT,
                      color_system=None)
    view = RunView(_run(), console)
    with view.live():
        for trial, (val, status) in enumerate(RESULTS[:2]):
            for event in trial_events(trial, val, status, 100.0 + 10 * trial):
                if event.HasField("trial_finished") and trial == 1:
                    event.trial_finished.description = HOSTILE
                view.update(event)
        view.update(rpb.RunEvent(mechanism=rpb.RunEvent.Mechanism(
            mechanism="m", action="proposed", trial=1, detail=HOSTILE)))
    piped = io.StringIO()
    plain = RunView(_run(), Console(file=piped, force_terminal=False, width=300))
    for event in trial_events(1, 1.4, rpb.TRIAL_STATUS_KEEP, 100.0):
        if event.HasField("trial_finished"):
            event.trial_finished.description = HOSTILE
        plain.update(event)
    return screen_of(out.getvalue()), piped.getvalue()


def test_deny_escape_sequences_in_descriptions_reach_no_terminal() -> None:
    screen, piped = _hostile_screen()
    shown = "\n".join(screen)
    assert sum(line.startswith("run run-live") for line in screen) == 1, shown  # not cleared
    rows = [line for line in screen if line.startswith("│")]
    assert [r.split("│")[1].strip() for r in rows if r.split("│")[1].strip()] == ["0", "1"]
    assert "\\x1b[2J" in rows[1] and "\\u202e" in shown, shown  # shown, not obeyed
    assert any("L2 proposed" in line and "\\x1b]0;owned" in line for line in screen), shown
    assert "\x1b" not in piped and "\u202e" not in piped and "\\x1b[2J" in piped


def test_sensitivity_without_sanitizing_the_escapes_take_over_the_screen(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The weakened view: every character passes through as the proposer wrote it.
    monkeypatch.setattr(live_view, "_escape", lambda ch: ch)
    screen, piped = _hostile_screen()
    shown = "\n".join(screen)
    assert "\\x1b" not in shown and "\x1b[2J" in piped  # the raw bytes went out
    # The clear-screen wiped what was shown: no title, no trial 0 row left to read.
    assert not any(line.startswith("run run-live") for line in screen), shown
    assert not any(line.startswith("│     0 │") for line in screen), shown


def test_the_eta_is_the_pace_of_finished_trials_times_those_left() -> None:
    view = RunView(_run(trials=10), Console(file=io.StringIO(), force_terminal=False))
    assert view.eta(1000.0) is None  # nothing finished: no pace to tell
    for trial in range(3):  # trials 0-2 finish 30 s apart (each ran 2 s)
        for event in trial_events(trial, 1.5, rpb.TRIAL_STATUS_DISCARD, 1000.0 + 30 * trial):
            view.update(event)
    # 8 of the 11 trials left at 30 s each, 5 s after the last finish.
    assert view.eta(1000.0 + 60 + 2 + 5) == pytest.approx(8 * 30 - 5)
    view.wall_budget = 100.0  # a wall budget ends it sooner
    view._opened = 1000.0
    assert view.eta(1000.0 + 67) == pytest.approx(100 - 67)
    view.update(rpb.RunEvent(run_paused=rpb.RunEvent.RunPaused(reason="llm down")))
    assert view.eta(1100.0) is None  # a paused run has no ETA


def test_deny_a_jobs_log_drives_no_terminal_it_is_printed_on(tmp_path: Path) -> None:
    """`bilevel artifact RUN trials/0/log` on a terminal: the job wrote that log, so its
    escape sequences are shown, not obeyed; piped or to a file it stays byte for byte."""
    from controller.store.artifacts import ArtifactStore
    from controller.store.runs import RunStore
    from tests.test_cli_terminal import in_terminal

    store = RunStore(tmp_path / "bilevel.sqlite3")
    store.create_run("run-a", {"task": {"preset": "surrogate"}, "budgets": {"max_trials": 1}})
    store.close()
    log = b"step 1 loss 2.0\n\x1b[2J\x1b[Hstep 9 loss 0.0001 (forged)\n\ttabbed\n"
    ArtifactStore(tmp_path / "runs").write_trial("run-a", 0, "log", log)
    argv = ("artifact", "run-a", "trials/0/log", "--state-dir", str(tmp_path))
    code, screen = in_terminal(*argv, timeout=60)
    assert code == 0, screen
    assert screen[0] == "step 1 loss 2.0"  # not cleared away
    assert screen[1] == "\\x1b[2J\\x1b[Hstep 9 loss 0.0001 (forged)"
    assert screen[2] == "        tabbed"
    piped = subprocess.run([sys.executable, "-m", "controller.cli", *argv],
                           capture_output=True, timeout=60)
    assert piped.returncode == 0 and piped.stdout == log
