"""A run's trials with one column per knob, gathered from its events: what the page's
knob columns, slice and parallel-coordinate plots, importance, compare view and export
all read.

A trial's knobs are its parent's plus the changes it proposed (TrialProposed.parent and
changes_json), as the offline proposers rebuild them; a trial without a parent (an old
run) edits the incumbent when it was proposed. The baseline's values are read out of
trial 0's editable file for the knobs the run changed; a knob not found there (a
command-line flag, a config file's key) has no baseline value: trials that never changed
it show none, and plots and importance leave them out rather than guess.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

from controller.api.gen.bilevel.v1 import runs_pb2 as rpb
from controller.api.gen.bilevel.v1 import sandbox_pb2 as spb
from controller.ui.importance import importance

MAX_TRIALS = 5000  # trials in one answer (the newest are kept)
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass
class Trial:
    index: int
    description: str = ""
    changes: dict[str, Any] = field(default_factory=dict)
    parent: int | None = None
    proposed_after: int | None = None  # the incumbent when it was proposed
    finished: bool = False
    status: str = ""  # keep, discard, crash (and any status the proto adds)
    loss: float | None = None
    seconds: float | None = None  # wall time: ended_at - started_at, as the terminal shows
    source: str = ""
    job_status: str = ""


@dataclass
class TrialTable:
    """Trials as far as the events applied so far tell (`last_seq`)."""

    trials: dict[int, Trial] = field(default_factory=dict)
    incumbent: int = 0
    last_seq: int = 0
    done: bool = False  # run_finished seen

    def apply(self, event: rpb.RunEvent) -> None:
        self.last_seq = max(self.last_seq, event.seq)
        kind = event.WhichOneof("event")
        if kind == "trial_proposed":
            p = event.trial_proposed
            t = self._trial(p.trial)
            t.description = p.description
            t.changes = _changes(p.changes_json)
            t.parent = p.parent if p.HasField("parent") else None
            t.proposed_after = self.incumbent
        elif kind == "trial_finished":
            self._finished(event.trial_finished)
        elif kind == "new_best":
            self.incumbent = event.new_best.trial
        elif kind == "run_finished":
            self.done = True

    def _trial(self, index: int) -> Trial:
        return self.trials.setdefault(index, Trial(index))

    def _finished(self, f: rpb.RunEvent.TrialFinished) -> None:
        t = self._trial(f.trial)
        t.finished = True
        t.status = _enum(rpb.TrialStatus, f.status, "TRIAL_STATUS_")
        t.loss = f.loss if f.HasField("loss") and math.isfinite(f.loss) else None
        t.description = f.description or t.description
        t.source = f.proposal_source
        t.job_status = _enum(spb.JobStatus, f.job_status, "JOB_STATUS_")
        start, end = f.started_at.ToNanoseconds(), f.ended_at.ToNanoseconds()
        t.seconds = (end - start) / 1e9 if start > 0 and end >= start else f.run_seconds

    def knob_names(self) -> list[str]:
        """Every knob some trial changed, in the order they first appear."""
        names: dict[str, None] = {}
        for t in sorted(self.trials.values(), key=lambda t: t.index):
            names.update(dict.fromkeys(t.changes))
        return list(names)

    def configs(self, baseline: dict[str, Any]) -> dict[int, dict[str, Any]]:
        """Each trial's knob values (None: not known), its parent's plus its changes."""
        names = self.knob_names()
        out: dict[int, dict[str, Any]] = {}
        for t in sorted(self.trials.values(), key=lambda t: t.index):
            if t.index == 0:
                out[0] = {n: baseline.get(n) for n in names}
                continue
            parent = t.parent if t.parent is not None else t.proposed_after
            before = out.get(parent, {}) if parent is not None and parent < t.index else {}
            out[t.index] = {n: t.changes.get(n, before.get(n)) for n in names}
        return out

    def answer(self, baseline: dict[str, Any], metric: str, maximize: bool) -> dict[str, Any]:
        """The page's view: knob columns (numeric or not), trials with their knob values
        and what they changed from their parent, and the knobs' importance."""
        names = self.knob_names()
        configs = self.configs(baseline)
        ordered = sorted(self.trials.values(), key=lambda t: t.index)[-MAX_TRIALS:]
        sign = -1.0 if maximize else 1.0
        rows = []
        for t in ordered:
            config = configs.get(t.index, {})
            parent = t.parent if t.parent is not None else t.proposed_after
            before = configs.get(parent, {}) if parent is not None else {}
            rows.append({
                "trial": t.index, "finished": t.finished, "status": t.status,
                "value": sign * t.loss if t.loss is not None else None,
                "seconds": t.seconds, "source": t.source, "description": t.description,
                "job_status": t.job_status, "parent": parent, "knobs": config,
                "changed": [[n, before.get(n), v] for n, v in t.changes.items()]})
        measured = [(configs.get(t.index, {}), sign * t.loss) for t in ordered
                    if t.finished and t.loss is not None]
        columns = [{"name": n, "numeric": _numeric([c.get(n) for c in configs.values()]),
                    "baseline_known": baseline.get(n) is not None} for n in names]
        return {"metric": metric, "maximize": maximize, "knobs": columns, "trials": rows,
                "more": len(self.trials) > len(ordered), "done": self.done,
                "importance": importance(measured, names)}


def export(view: dict[str, Any], form: str) -> tuple[str, str]:
    """The finished trials of an `answer` as CSV or JSON text, one column per knob (named
    `knob:NAME` where a knob's name is also a fixed column's), and its content type."""
    metric = str(view["metric"])
    fixed = ["trial", "status", metric, "seconds", "source", "description", "parent"]
    knob_columns = [(k["name"], f"knob:{k['name']}" if k["name"] in fixed else k["name"])
                    for k in view["knobs"]]
    records = []
    for r in view["trials"]:
        if not r["finished"]:
            continue
        record: dict[str, Any] = {"trial": r["trial"], "status": r["status"],
                                  metric: r["value"], "seconds": r["seconds"],
                                  "source": r["source"], "description": r["description"],
                                  "parent": r["parent"]}
        for name, column in knob_columns:
            record[column] = r["knobs"].get(name)
        records.append(record)
    if form == "json":
        return json.dumps(records, indent=1, allow_nan=False), "application/json"
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([_cell(c) for c in fixed + [c for _, c in knob_columns]])
    for record in records:
        writer.writerow([_cell(v) for v in record.values()])
    return out.getvalue(), "text/csv"


def _cell(value: Any) -> str:
    """A CSV cell: numbers as they are, other text with a leading quote where a
    spreadsheet would take it for a formula."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        value = json.dumps(value)
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def _changes(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}


def _enum(enum: Any, value: int, prefix: str) -> str:
    """An enum value as the page shows it ("keep"); a number the proto does not name yet."""
    if value in enum.values():
        return str(enum.Name(value)).removeprefix(prefix).lower()
    return str(value)


def _numeric(values: list[Any]) -> bool:
    known = [v for v in values if v is not None]
    return bool(known) and all(isinstance(v, int | float) and not isinstance(v, bool)
                               for v in known)
