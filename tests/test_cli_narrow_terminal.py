"""The live view on a small terminal (80x24) with long descriptions (TPE's list every
knob): every row stays one line, the newest rows and the progress line stay on the
screen for the whole run, a crashed row says why, and the screen is never blank at the
start. Read off a terminal emulator, in-process and on a real pty."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from rich.console import Console

from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.api.gen.bilevel.v1 import sandbox_pb2 as spb
from controller.commands.live_view import RunView
from tests.pty_session import PtySession, Screen
from tests.test_cli_live_view import REDRAWN, _run, trial_events

COLUMNS, LINES = 80, 24
LONG = ", ".join(f"KNOB_{k} {k * 0.1:.3f} -> {k * 0.37:.5f}" for k in range(12))


def trial_rows(screen: Screen) -> list[list[str]]:
    """The table's rows (cells stripped) as drawn; a wrapped row's continuation lines
    would show up here with an empty trial cell."""
    return [[c.strip() for c in line.split("│")[1:-1]] for line in screen
            if line.startswith("│")]


def progress_line(screen: Screen) -> str:
    """The first status line under the table's bottom border ("" when none is drawn)."""
    bottom = [i for i, line in enumerate(screen) if line.startswith("└")]
    if not bottom or bottom[-1] + 1 >= len(screen):
        return ""
    return screen[bottom[-1] + 1]


def assert_fits(screen: Screen, total: int) -> None:
    """One line per row, the newest rows last, the progress line under the table."""
    shown = "\n".join(screen)
    rows = trial_rows(screen)
    assert all(r[0] or "earlier" in r[-1] for r in rows), f"a row wrapped:\n{shown}"
    assert progress_line(screen).startswith("trials "), f"progress line cut off:\n{shown}"
    assert f"/{total} (+ baseline)" in progress_line(screen), shown
    assert not any(line.strip() == "..." for line in screen), f"the view was cropped:\n{shown}"


def crash(trial: int, start: float, job: spb.JobStatus, exc: str = "") -> list[rpb.RunEvent]:
    events = trial_events(trial, 0.0, rpb.TRIAL_STATUS_CRASH, start)
    finished = events[1].trial_finished
    finished.ClearField("loss")
    finished.job_status = job
    finished.exception.type = exc
    return events


def test_long_rows_at_80x24_stay_one_line_each_and_the_progress_line_stays() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=COLUMNS, height=LINES,
                      color_system=None)
    view = RunView(_run(30), console)
    screens = []
    from tests.test_cli_live_view import screen_of

    def snapshot() -> Screen:
        time.sleep(REDRAWN)
        screen = screen_of(out.getvalue(), height=LINES)
        return [line[:COLUMNS] for line in screen]

    with view.live():
        screens.append(snapshot())  # before any event: a header, not a blank screen
        for trial in range(25):
            if trial == 4:
                events = crash(trial, 1000.0 + 10 * trial, spb.JOB_STATUS_ERROR,
                               "ZeroDivisionError")
            elif trial == 5:
                events = crash(trial, 1000.0 + 10 * trial, spb.JOB_STATUS_TIMEOUT)
            elif trial == 6:
                events = crash(trial, 1000.0 + 10 * trial, spb.JOB_STATUS_OK)  # no metric
            else:
                events = trial_events(trial, 2.0 - trial / 100, rpb.TRIAL_STATUS_DISCARD,
                                      1000.0 + 10 * trial)
            for event in events:
                if event.HasField("trial_finished"):
                    event.trial_finished.description = LONG
                view.update(event)
            if trial in (2, 7, 24):
                screens.append(snapshot())

    first = "\n".join(screens[0])
    assert "run run-live" in first and "starting..." in first, first
    for screen, newest in zip(screens[1:], (2, 7, 24), strict=True):
        assert_fits(screen, 30)
        assert len(trial_rows(screen)) >= min(newest + 1, 10), "\n".join(screen)
        assert trial_rows(screen)[-1][0] == str(newest), "\n".join(screen)
    by_trial = {r[0]: r for r in trial_rows(screens[2])}
    assert by_trial["4"][1] == "crash" and by_trial["4"][2].startswith("ZeroDiv"), by_trial
    assert by_trial["5"][2] == "timeout" and by_trial["6"][2] == "no val_bpb", by_trial
    rows = trial_rows(screens[3])  # 25 trials on 24 lines: the first ones are counted
    assert rows[0][-1] == f"... {25 - len(rows) + 1} earlier", rows


@pytest.mark.docker
def test_a_tpe_run_on_an_80x24_pty_never_freezes_or_cuts_the_progress_line(
        tmp_path: Path, sandbox_image: str) -> None:
    trials = 6
    session = PtySession(("run", "--preset", "surrogate", "--proposer", "tpe", "--trials",
                          str(trials), "--state-dir", str(tmp_path), "--image", sandbox_image,
                          "--namespace", "pytest-cli-narrow"), COLUMNS, LINES)
    code, final = session.finish()
    shown = "\n".join(final)
    assert code == 0, shown
    # Drawn at once: the first thing on the screen says the controller is starting.
    assert session.frames and "starting a controller" in "\n".join(session.frames[0].screen)
    live = [f for f in session.frames if any(line.startswith("┏") for line in f.screen)
            and "succeeded -" not in "\n".join(f.screen)]
    assert live, shown
    newest = 0
    for frame in live:
        assert_fits(frame.screen, trials)
        rows = trial_rows(frame.screen)
        newest = max(newest, int(rows[-1][0]) if rows else 0)
    assert newest >= trials - 2, "the view stuck on its first rows"  # it followed the run
    progress = [progress_line(f.screen) for f in live]
    assert any(f"trials {trials - 1}/{trials}" in p or f"trials {trials}/{trials}" in p
               for p in progress), progress
    assert any("ETA" in p for p in progress), progress
    for row in trial_rows(final):  # a crash names its cause where its value would be
        if row[1] == "crash":
            assert row[2] not in ("", "-"), row
