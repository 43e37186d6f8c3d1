"""What `bilevel run`, `watch` and `resume` show while a run goes on.

On a terminal: one Rich live view, redrawn in place - a trials table that grows (the
latest rows that fit), best so far, the running trials' elapsed time and an ETA for the
run. Every row is one line cut to the terminal's width, and the status lines are counted
before the rows: a wrapped row would make the view taller than the screen, and Rich
would then crop its bottom (the progress line) for the rest of the run. When the view
ends it is replaced by the full table, printed once. Anything else written to stderr
meanwhile (a --verbose log) goes above the view, never into it. Elsewhere (a pipe, CI):
exactly one plain line per event.
"""

from __future__ import annotations

import threading
import time
import unicodedata
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.api.gen.bilevel.v1 import sandbox_pb2 as spb

_STATUS = {rpb.TRIAL_STATUS_KEEP: "keep", rpb.TRIAL_STATUS_DISCARD: "discard",
           rpb.TRIAL_STATUS_CRASH: "crash", rpb.TRIAL_STATUS_PRUNED: "pruned"}
# Crashes the trusted side declared: shown by cause (they are never kept).
_RULE_BREAKS = {spb.JOB_STATUS_OVER_BUDGET: "over_budget",
                spb.JOB_STATUS_SEED_IGNORED: "seed_ignored"}
_STYLE = {"keep": "green", "discard": "", "crash": "red", "pruned": "yellow"}
DESCRIPTION_CHARS = 200  # of a description in a line or cell: it is the proposer's text
TABLE_CHROME = 6  # title, top border, header, its rule, bottom border, one line spare
REFRESH_SECONDS = 0.1  # at most one redraw per event this often; the Live redraws 4/s


def printable(text: str, limit: int = DESCRIPTION_CHARS) -> str:
    """One line of untrusted text (an LLM's description, a mechanism's detail) made safe
    for a terminal: whitespace runs become one space, and control and format characters
    (ESC sequences that move the cursor or clear the screen, bidi overrides) are shown
    as escapes instead of acted on. Cut to `limit` characters."""
    text = " ".join(text.split())[:limit]
    return "".join(map(_escape, text))


def terminal_safe(text: str) -> str:
    """Many lines of untrusted text (a job's log) for a terminal: as `printable`, but
    keeping newlines and tabs, and uncut."""
    return "".join(ch if ch in "\n\t" else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    if unicodedata.category(ch) not in ("Cc", "Cf"):
        return ch
    return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"


@dataclass(frozen=True)
class Row:
    trial: int
    status: str
    value: float | None  # in the task's metric, as shown
    best: float | None  # the best after this trial
    seconds: float | None
    description: str
    reason: str = ""  # a crash's cause, shown where its value would be


def status_name(t: rpb.RunEvent.TrialFinished) -> str:
    """keep, discard, crash, a rule break's cause, or a newer status's own name."""
    if t.job_status in _RULE_BREAKS:
        return _RULE_BREAKS[t.job_status]
    if t.status in _STATUS:
        return _STATUS[t.status]
    try:
        return str(rpb.TrialStatus.Name(t.status)).removeprefix("TRIAL_STATUS_").lower()
    except ValueError:
        return "?"


def crash_reason(t: rpb.RunEvent.TrialFinished, metric: str) -> str:
    """Why a crashed trial has no value, in a word: the exception the job raised, else
    how the job ended (timeout, oom, ...), else that it wrote no metric."""
    if t.exception.type:
        return printable(t.exception.type, 40)
    if t.job_status not in (spb.JOB_STATUS_UNSPECIFIED, spb.JOB_STATUS_OK):
        try:
            return str(spb.JobStatus.Name(t.job_status)).removeprefix("JOB_STATUS_").lower()
        except ValueError:
            return "job failed"
    return f"no {metric}"


class RunView:
    """A run's progress from its events; `live()` is the terminal view (a no-op when
    the console is not a terminal, where `update` prints lines instead)."""

    def __init__(self, run: rpb.Run, console: Console, after_seq: int = 0) -> None:
        self.run_id = run.id
        self.preset = run.request.task.preset
        self.budget = run.request.budgets.max_trials
        self.wall_budget = run.request.budgets.max_wall_seconds
        self.console = console
        # From the first event every finished trial arrives again and is counted then.
        self.done = run.trials_done if after_seq else 0
        # Values are shown in the task's metric: the API's loss fields hold the loss
        # (the metric negated for a maximised metric, TaskSpec.maximize).
        self.metric = run.request.task.metric or "val_bpb"
        self.sign = -1.0 if run.request.task.maximize else 1.0
        self.baseline = self.sign * run.baseline_loss \
            if after_seq and run.HasField("baseline_loss") else None
        self.best = self.sign * run.best_loss if after_seq and run.HasField("best_loss") \
            else None
        self.rows: list[Row] = []
        self.running: dict[int, float] = {}  # trial -> start (epoch seconds)
        self.finish_times: list[float] = []
        self.phase = ""
        self._opened = time.time()
        self._lock = threading.Lock()  # the refresh thread renders while events arrive
        self._live: Live | None = None
        self._drawn = 0.0  # when an event last redrew the view (a replay redraws less)

    # Terminal view

    def live(self) -> AbstractContextManager[object]:
        if not self.console.is_terminal:
            return nullcontext()
        self._live = _FinalLive(self, self.console)
        return self._live

    def __rich__(self) -> RenderableType:
        return self.render(self.console.height)

    def render(self, height: int | None = None) -> RenderableType:
        """The table and the status lines under it, every line within the console's
        width; with `height`, only the last rows that leave room for the rest."""
        with self._lock:
            rows = list(self.rows)
            running = dict(self.running)
        width = self.console.width
        status = [Text(line, no_wrap=True, overflow="ellipsis")
                  for line in fit_lines(self._status_parts(running), width)]
        title = f"run {printable(self.run_id)}  {printable(self.preset)}"
        table = Table(title=Text(title, no_wrap=True, overflow="ellipsis"),
                      title_justify="left")
        for name, justify in (("trial", "right"), ("status", "left"), (self.metric, "right"),
                              ("best", "right"), ("seconds", "right"),
                              ("description", "left")):
            # Rich narrows the wrappable description first; its cells are cut, not
            # wrapped, except in the table left behind (printed once, it may wrap).
            table.add_column(name, justify=justify,  # type: ignore[arg-type]
                             overflow="ellipsis", no_wrap=name != "description")
        hidden = 0
        if height is not None:
            fits = max(height - TABLE_CHROME - len(status), 2)
            hidden = len(rows) - (fits - 1) if len(rows) > fits else 0
        if hidden:
            table.add_row("", "", "", "", "", Text(f"... {hidden} earlier", style="dim"))
        cut = height is not None
        reason_width = max(cell_len(self.metric), 10)
        for row in rows[hidden:]:
            value = Text(_cut(row.reason, reason_width), style="red") if row.reason \
                else Text(_fmt(row.value))
            table.add_row(str(row.trial), Text(row.status, style=_STYLE.get(row.status, "")),
                          value, _fmt(row.best), _secs(row.seconds),
                          Text(row.description, no_wrap=cut, overflow="ellipsis"))
        return Group(table, *status)

    def _status_parts(self, running: dict[int, float]) -> list[str]:
        now = time.time()
        parts = [f"trials {max(self.done - 1, 0)}/{self.budget} (+ baseline)",
                 f"best {_fmt(self.best)}", f"baseline {_fmt(self.baseline)}"]
        if running:
            parts.append("running " + ", ".join(
                f"trial {t} {_duration(now - start)}" for t, start in sorted(running.items())))
        elif not self.rows and not self.phase:
            parts.append("starting...")
        eta = self.eta(now)
        if eta is not None:
            parts.append(f"ETA {_duration(eta)}")
        if self.phase:
            parts.append(self.phase)
        return parts

    def eta(self, now: float) -> float | None:
        """Seconds until the trial budget is spent, at the pace of the trials finished
        so far (so parallel trials count); capped by what is left of a wall budget."""
        left = self.budget + 1 - self.done
        if left <= 0 or self.phase:
            return None
        with self._lock:
            finished = list(self.finish_times)
            starts = list(self.running.values())
        if len(finished) >= 2:
            pace = (finished[-1] - finished[0]) / (len(finished) - 1)
        elif self.rows and self.rows[-1].seconds:
            pace = self.rows[-1].seconds
        else:
            return None
        since = now - (finished[-1] if finished else min(starts, default=now))
        eta = max(left * pace - since, 0.0)
        if self.wall_budget:
            eta = min(eta, max(self.wall_budget - (now - self._opened), 0.0))
        return eta

    # Events

    def update(self, event: rpb.RunEvent) -> None:
        kind = event.WhichOneof("event")
        at = event.time.ToNanoseconds() / 1e9 if event.HasField("time") else time.time()
        if kind == "trial_started":
            with self._lock:
                self.running[event.trial_started.trial] = at
        elif kind == "trial_finished":
            self._finished(event.trial_finished, at)
        elif kind == "new_best":
            self.best = self.sign * event.new_best.loss
        elif kind == "run_started":  # (again, for a resumed run: after its pause)
            self.phase = ""
            with self._lock:  # the ETA's pace is that of this start's trials
                self.finish_times.clear()
        elif kind == "run_finished":
            self.phase = "finished"
        elif kind == "mechanism":
            m = event.mechanism
            where = f" at trial {m.trial}" if m.trial >= 0 else ""
            self.note(f"L2 {m.action:<13} {m.mechanism}{where}: {m.detail[:200]}")
        elif kind == "config_adjusted":
            c = event.config_adjusted
            text = (f"strategy {c.strategy}; freeze {list(c.freeze)}; unfreeze "
                    f"{list(c.unfreeze)}" if c.applied else f"refused: {list(c.rejected)} "
                    f"{c.error}")
            self.note(f"L1.5 trial {c.trial}: {text}")
        elif kind == "run_paused":
            self.phase = "paused"
            self.note(f"paused: {event.run_paused.reason}")
        now = time.monotonic()
        if self._live is not None and now - self._drawn >= REFRESH_SECONDS:
            self._drawn = now
            self._live.refresh()

    def _finished(self, t: rpb.RunEvent.TrialFinished, at: float) -> None:
        status = status_name(t)
        val = self.sign * t.loss if t.HasField("loss") else None
        reason = crash_reason(t, self.metric) if status == "crash" and val is None else ""
        if t.trial == 0 and val is not None:
            self.baseline = val
        if t.status == rpb.TRIAL_STATUS_KEEP and val is not None:
            self.best = val  # a keep is the new incumbent (its new_best event follows)
        seconds = None
        if t.HasField("started_at") and t.HasField("ended_at"):
            seconds = max((t.ended_at.ToNanoseconds() - t.started_at.ToNanoseconds()) / 1e9,
                          0.0)
        row = Row(t.trial, status, val, self.best, seconds, printable(t.description), reason)
        with self._lock:
            self.done += 1
            self.rows.append(row)
            self.running.pop(t.trial, None)
            self.finish_times.append(at)
        if self._live is None:
            self.console.print(
                f"trial {row.trial:>3}  {status:<7} {self.metric} {reason or _fmt(val)}  best "
                f"{_fmt(row.best)}  {_secs(seconds):>6}s  {row.description}",
                highlight=False, markup=False, soft_wrap=True)

    def note(self, text: str) -> None:
        """A message outside the table: one line, above the live view on a terminal."""
        self.console.print(printable(text, 1000), highlight=False, markup=False,
                           soft_wrap=True)


class _FinalLive(Live):
    """A transient live view that leaves the full table behind, printed once."""

    def __init__(self, view: RunView, console: Console) -> None:
        super().__init__(view, console=console, refresh_per_second=4, transient=True,
                         redirect_stdout=True, redirect_stderr=True)
        self._view = view

    def stop(self) -> None:
        super().stop()
        self._view.phase = self._view.phase or "stopped"  # no ETA in what stays
        self.console.print(self._view.render())


def fit_lines(parts: list[str], width: int, sep: str = "  |  ") -> list[str]:
    """`parts` joined by `sep` into as few lines as fit in `width` columns, a part never
    split (one longer than the width is cut when drawn)."""
    lines: list[str] = []
    for part in parts:
        if lines and cell_len(lines[-1] + sep + part) <= width:
            lines[-1] += sep + part
        else:
            lines.append(part)
    return lines


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6f}"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
