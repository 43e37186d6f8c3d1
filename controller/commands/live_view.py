"""What `bilevel run`, `watch` and `resume` show while a run goes on.

On a terminal: one Rich live view, redrawn in place - a trials table that grows (the
latest rows that fit), best so far, the running trials' elapsed time and an ETA for the
run. When the view ends it is replaced by the full table, printed once. Anything else
written to stderr meanwhile (a --verbose log) goes above the view, never into it.
Elsewhere (a pipe, CI): exactly one plain line per event.
"""

from __future__ import annotations

import threading
import time
import unicodedata
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

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
CHROME_LINES = 9  # title, header, borders and the status lines around the table's rows


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


class RunView:
    """A run's progress from its events; `live()` is the terminal view (a no-op when
    the console is not a terminal, where `update` prints lines instead)."""

    def __init__(self, run: rpb.Run, console: Console) -> None:
        self.run_id = run.id
        self.preset = run.request.task.preset
        self.budget = run.request.budgets.max_trials
        self.wall_budget = run.request.budgets.max_wall_seconds
        self.console = console
        self.done = run.trials_done
        # Values are shown in the task's metric: the API's loss fields hold the loss
        # (the metric negated for a maximised metric, TaskSpec.maximize).
        self.metric = run.request.task.metric or "val_bpb"
        self.sign = -1.0 if run.request.task.maximize else 1.0
        self.baseline = self.sign * run.baseline_loss if run.HasField("baseline_loss") \
            else None
        self.best = self.sign * run.best_loss if run.HasField("best_loss") else None
        self.rows: list[Row] = []
        self.running: dict[int, float] = {}  # trial -> start (epoch seconds)
        self.finish_times: list[float] = []
        self.phase = ""
        self._opened = time.time()
        self._lock = threading.Lock()  # the refresh thread renders while events arrive
        self._live: Live | None = None

    # Terminal view

    def live(self) -> AbstractContextManager[object]:
        if not self.console.is_terminal:
            return nullcontext()
        self._live = _FinalLive(self, self.console)
        return self._live

    def __rich__(self) -> RenderableType:
        fits = max(3, self.console.height - CHROME_LINES)
        return self.render(fits)

    def render(self, max_rows: int | None = None) -> RenderableType:
        """The table (its last `max_rows` rows) and the status lines under it."""
        with self._lock:
            rows = list(self.rows)
            running = dict(self.running)
        table = Table(title=f"run {printable(self.run_id)}  {printable(self.preset)}",
                      title_justify="left")
        for name, justify in (("trial", "right"), ("status", "left"), (self.metric, "right"),
                              ("best", "right"), ("seconds", "right"),
                              ("description", "left")):
            table.add_column(name, justify=justify,  # type: ignore[arg-type]
                             overflow="ellipsis", no_wrap=name != "description")
        hidden = len(rows) - max_rows if max_rows is not None and len(rows) > max_rows \
            else 0
        if hidden:
            table.add_row("", Text(f"... {hidden} earlier", style="dim"), "", "", "", "")
        for row in rows[hidden:]:
            table.add_row(str(row.trial), Text(row.status, style=_STYLE.get(row.status, "")),
                          _fmt(row.value), _fmt(row.best), _secs(row.seconds),
                          Text(row.description))
        return Group(table, Text(self._status_line(running), no_wrap=True,
                                 overflow="ellipsis"))

    def _status_line(self, running: dict[int, float]) -> str:
        now = time.time()
        parts = [f"trials {max(self.done - 1, 0)}/{self.budget} (+ baseline)",
                 f"best {_fmt(self.best)}", f"baseline {_fmt(self.baseline)}"]
        if running:
            parts.append("running " + ", ".join(
                f"trial {t} {_duration(now - start)}" for t, start in sorted(running.items())))
        eta = self.eta(now)
        if eta is not None:
            parts.append(f"ETA {_duration(eta)}")
        if self.phase:
            parts.append(self.phase)
        return "  |  ".join(parts)

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
        if self._live is not None:
            self._live.refresh()

    def _finished(self, t: rpb.RunEvent.TrialFinished, at: float) -> None:
        status = _RULE_BREAKS.get(t.job_status) or _STATUS.get(t.status, "?")
        val = self.sign * t.loss if t.HasField("loss") else None
        if t.trial == 0 and val is not None:
            self.baseline = val
        if t.status == rpb.TRIAL_STATUS_KEEP and val is not None:
            self.best = val  # a keep is the new incumbent (its new_best event follows)
        seconds = None
        if t.HasField("started_at") and t.HasField("ended_at"):
            seconds = max((t.ended_at.ToNanoseconds() - t.started_at.ToNanoseconds()) / 1e9,
                          0.0)
        row = Row(t.trial, status, val, self.best, seconds, printable(t.description))
        with self._lock:
            self.done += 1
            self.rows.append(row)
            self.running.pop(t.trial, None)
            self.finish_times.append(at)
        if self._live is None:
            self.console.print(
                f"trial {row.trial:>3}  {status:<7} {self.metric} {_fmt(val)}  best "
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
