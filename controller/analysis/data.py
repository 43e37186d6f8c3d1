"""What a report reads about one run, loaded from the controller's state dir.

Read-only: the report never changes a run. Mechanism hook calls and the mechanisms a
run tried come from the store's mechanism read API (controller/store/mechanisms.py).
Every diff comes from a candidate train.py, which is hostile text: each is capped here
(MAX_DIFF_CHARS, MAX_TRIAL_DIFFS) and escaped where it is rendered.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from controller.research.level2.report import summaries
from controller.research.task import Objective
from controller.store import curves as stored_curves
from controller.store.artifacts import ArtifactStore
from controller.store.records import NotFoundError, RunRecord, TrialRecord
from controller.store.runs import RunStore

SURROGATE_NOTE = (
    "Surrogate task: a noisy closed-form response surface over the trainer's knobs "
    "(trainer/surrogate.py), evaluated in milliseconds in the sandbox. It is a test bed "
    "for the search machinery; its numbers are not evidence about real training.")
MAX_DIFF_CHARS = 200_000  # the best diff
MAX_TRIAL_DIFF_CHARS = 20_000  # each trial's diff against its parent
MAX_TRIAL_DIFFS = 500  # trials whose diff a report shows


def cap(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters with a line that says so."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n… cut: {len(text) - limit} more characters not shown\n"


@dataclass(frozen=True)
class MechanismStats:
    """Hook calls of one mechanism in one run (as `summarize_hook_calls` in
    research/level2/records.py counts them)."""

    mechanism: str
    calls: int
    effective: int
    failures: int
    effects: dict[str, int] = field(default_factory=dict)
    origin: str = ""  # "initial", "library" or "llm"
    status: str = ""  # active, kept, reverted, disabled, gate_rejected, ...
    finding: str = ""  # research/level2/report.py's one-line finding


@dataclass(frozen=True)
class RunData:
    run: RunRecord
    trials: list[TrialRecord]
    best_diff: str  # baseline train.py -> best train.py
    mechanisms: list[MechanismStats]  # every mechanism tried or called, in order
    trial_diffs: dict[int, str] = field(default_factory=dict)  # trial -> diff vs its parent
    # trial -> its reported training curve [(step, value)] (untrusted; store/curves.py)
    curves: dict[int, list[tuple[int, float | None]]] = field(default_factory=dict)

    @property
    def preset(self) -> str:
        return str(self.run.settings.get("task", {}).get("preset", ""))

    @property
    def objective(self) -> Objective:
        """The task's metric and direction, as the server recorded them with the run
        (a run stored without them is a val_bpb run). Stored values are the loss."""
        task = self.run.settings.get("task", {})
        return Objective(str(task.get("metric") or "val_bpb"),
                         str(task.get("direction") or "minimize"),
                         bool(task.get("self_reported", False)))

    @property
    def budget(self) -> int:
        return int(self.run.settings.get("budgets", {}).get("max_trials", 0))

    @property
    def llm_calls(self) -> int:
        return sum(1 for t in self.trials if t.llm_tokens)


class StateDir:
    """The store and artifacts of a state dir, opened for reading."""

    def __init__(self, state_dir: Path) -> None:
        db = state_dir / "bilevel.sqlite3"
        if not db.exists():
            raise NotFoundError("state dir", str(state_dir),
                                "pass the --state-dir the runs were made with")
        self.root = state_dir
        self.store = RunStore(db)
        self.artifacts = ArtifactStore(state_dir / "runs")

    def close(self) -> None:
        self.store.close()

    def load(self, run_id: str, trial_diffs: bool = False) -> RunData:
        """One run; with `trial_diffs`, each finished trial's diff too (run report)."""
        run = self.store.get_run(run_id)
        trials = self.store.trials(run_id)
        diffs: dict[int, str] = {}
        for t in trials if trial_diffs else []:
            if t.finished and t.index > 0 and len(diffs) < MAX_TRIAL_DIFFS:
                try:
                    raw = self.artifacts.read_trial(run_id, t.index, "diff")
                except NotFoundError:
                    continue
                diffs[t.index] = cap(raw.decode("utf-8", "replace"), MAX_TRIAL_DIFF_CHARS)
        return RunData(run, trials, self._best_diff(run), self._mechanisms(run_id), diffs,
                       stored_curves.load(self.store, run_id))

    def _best_diff(self, run: RunRecord) -> str:
        if run.best_trial is None or run.best_trial == 0:
            return ""
        try:
            base = self.artifacts.read_trial(run.id, 0, "train.py")
            best = self.artifacts.read_trial(run.id, run.best_trial, "train.py")
        except NotFoundError:
            return ""
        return best_diff(base, best, run.best_trial)

    def _mechanisms(self, run_id: str) -> list[MechanismStats]:
        """Calls, effective calls and failures per mechanism; a mechanism that was tried
        but never called shows with zero calls (it was not injected)."""
        rows = {m.name: m for m in self.store.mechanisms(run_id)}
        findings = {s.row.name: s.finding for s in summaries(self.store, run_id)}
        calls: dict[str, list[str]] = {name: [] for name in rows}
        effective: dict[str, int] = {}
        for call in self.store.mechanism_records(run_id):
            calls.setdefault(call.mechanism, []).append(call.effect)
            effective[call.mechanism] = effective.get(call.mechanism, 0) + call.effective
        out = []
        for name, effects in calls.items():
            counts: dict[str, int] = {}
            for e in effects:
                counts[e] = counts.get(e, 0) + 1
            row = rows.get(name)
            out.append(MechanismStats(name, len(effects), effective.get(name, 0),
                                      counts.get("failed", 0), counts,
                                      row.origin if row else "", row.status if row else "",
                                      findings.get(name, "")))
        return out


def best_diff(baseline: bytes, best: bytes, best_trial: int) -> str:
    """The unified diff baseline train.py -> best train.py, capped."""
    base_text, best_text = (b.decode("utf-8", "replace") for b in (baseline, best))
    return cap("".join(difflib.unified_diff(
        base_text.splitlines(keepends=True), best_text.splitlines(keepends=True),
        "baseline/train.py", f"trial-{best_trial}/train.py")), MAX_DIFF_CHARS)
