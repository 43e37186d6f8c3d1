"""Progress curves and pruning with real parts: a task directory whose train.py reports
its curve (and some hostile lines) run by `bilevel run --pruner median` through the real
loop in real containers, the store in its SQLite file; and the two ways a candidate can
lie about its curve, each through the real task evaluation and the loop's watch."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from controller.analysis.data import StateDir
from controller.analysis.report import run_report
from controller.api import convert
from controller.research.level1.pruners import MedianPruner, PrunerSettings
from controller.research.level1.watch import ProgressWatch
from controller.research.tasks.generic import ManifestTask
from controller.research.tasks.manifest import load_task_dir
from controller.sandbox.backend import SandboxBackend
from controller.store import curves
from controller.store.records import EventKind, TrialStatus
from controller.store.runs import RunStore
from controller.ui.curves import CurveTable
from tests.test_cli_commands import bilevel

pytestmark = pytest.mark.docker

# The curve 1 / (1 + RATE * step) over 12 steps, 0.12 s apart; `claim` scales what it
# reports (1: the truth). The scorer computes the same function of the RATE it reads
# from the returned model, so the trusted value at step 12 decides.
TRAIN = '''import json, os, time
RATE = 0.5
claim = 1.0  # lowercase: not a knob
print("bilevel-progress " + "{" + "[" * 50000 + "]" * 50000 + "}")  # hostile: deep
print("bilevel-progress " + json.dumps({"step": 0, "val_loss": 1.0}) + " " * 200000)
print('bilevel-progress {"step": 0, "val_loss": NaN, "x": 1}')  # step 0 is warm-up
for step in range(1, 13):
    time.sleep(0.12)
    print("bilevel-progress " + json.dumps({"step": step,
                                            "val_loss": claim / (1 + RATE * step)}),
          flush=True)
os.makedirs("out", exist_ok=True)
json.dump({"rate": RATE}, open("out/model.json", "w"))
'''
SCORE = '''import json
rate = float(json.load(open("out/model.json"))["rate"])
print(json.dumps({"val_loss": 1 / (1 + rate * 12)}))
'''
MANIFEST = '''name = "curve-task"
editable = "train.py"
metric = "val_loss"
direction = "minimize"

[train]
command = ["python3", "train.py"]
wall_seconds = 60
memory_mb = 256
outputs = "out"
output_mb = 1

[score]
command = ["python3", "score.py"]
wall_seconds = 30
memory_mb = 256

[knobs]
RATE = {low = 0.01, high = 1.0, log = true}
'''


def _task(root: Path) -> Path:
    root.mkdir()
    (root / "bilevel-task.toml").write_text(MANIFEST)
    (root / "train.py").write_text(TRAIN)
    (root / "score.py").write_text(SCORE)
    return root


def test_a_run_prunes_hopeless_trials_stores_their_curves_and_never_keeps_them(
        tmp_path: Path, sandbox_image: str) -> None:
    task = _task(tmp_path / "task")
    state = tmp_path / "state"
    done = bilevel("run", "--task", str(task), "--trials", "6", "--proposer", "random_search",
                   "--seed", "4", "--final-seeds", "0", "--pruner", "median",
                   "--prune-startup", "1", "--prune-min-step", "2", "--state-dir", str(state),
                   "--image", sandbox_image, "--namespace", "pytest-pruning")
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip().partition(": ")[0]
    store = RunStore(state / "bilevel.sqlite3")
    trials = {t.index: t for t in store.trials(run_id)}
    assert len(trials) == 7 and all(t.finished for t in trials.values())  # pruned count
    pruned = [t for t in trials.values() if t.status is TrialStatus.PRUNED]
    assert pruned and len(pruned) < 6, [(t.index, t.status) for t in trials.values()]
    run = store.get_run(run_id)
    for t in pruned:
        assert t.val_bpb is None and run.best_trial != t.index
        assert t.seconds < trials[0].seconds  # stopped before its 12 steps
        assert "median rule" in t.metrics["decision"]
    stored = curves.load(store, run_id)
    # The deep and the huge line left no trace; the NaN at step 0 is "diverged" (null).
    assert stored[0] == [(0, None), *((s, pytest.approx(1 / (1 + 0.5 * s)))
                                      for s in range(1, 13))]
    assert all(stored[t.index][-1][0] < 12 for t in pruned)
    tsv = bilevel("artifact", run_id, "results.tsv", "--state-dir", str(state))
    rows = [line.split("\t") for line in tsv.stdout.splitlines()]
    statuses = [r[rows[0].index("status")] for r in rows[1:]]
    assert statuses.count("pruned") == len(pruned) and len(statuses) == 7
    events = store.events_after(run_id, 0, 10_000)
    table = CurveTable()
    for e in events:
        table.apply(convert.event(e))
    shown = table.answer()["curves"]
    assert shown["0"][-1] == [12, pytest.approx(1 / 7)]  # what the UI backend serves
    assert any(e.kind is EventKind.TRIAL_PROGRESS and e.payload["pruned"] for e in events)
    store.close()
    data = StateDir(state)
    try:
        report = run_report(data.load(run_id, trial_diffs=True))
    finally:
        data.close()
    assert "Training curves" in report.html and "were pruned" in report.html


@pytest.fixture
def watched(tmp_path: Path, executor: SandboxBackend) -> tuple[ManifestTask, ProgressWatch]:
    """The curve task with an honest baseline curve (trial 0) completed in the store."""
    task = ManifestTask(load_task_dir(_task(tmp_path / "task")), executor)
    store = RunStore(tmp_path / "bilevel.sqlite3")
    store.create_run("run-liars", {})
    watch = ProgressWatch("run-liars", store, task.objective,
                          MedianPruner(PrunerSettings("median", startup_trials=1,
                                                      min_step=2)), threading.Event())
    watch.begin(0, prunable=False)
    for s in range(1, 13):
        watch.sink(0)("stdout", b'bilevel-progress {"step": %d, "val_loss": %r}\n'
                      % (s, 1 / (1 + 0.5 * s)))
    watch.finish(0, TrialStatus.KEEP)
    return task, watch


def _run(task: ManifestTask, watch: ProgressWatch, index: int, rate: float,
         claim: float) -> tuple[float | None, str, str]:
    source = task.baseline_source().replace("RATE = 0.5", f"RATE = {rate}").replace(
        "claim = 1.0", f"claim = {claim}")
    outcome = task.evaluate(source, 0, watch.begin(index), on_output=watch.sink(index))
    return outcome.val_bpb, outcome.job_status, watch.pruned(index)


def test_a_curve_that_claims_better_than_it_is_escapes_pruning_and_its_score_decides(
        watched: tuple[ManifestTask, ProgressWatch]) -> None:
    task, watch = watched
    # A slow learner (worse than the baseline) that claims a hundredth of its loss.
    value, status, pruned = _run(task, watch, 1, rate=0.05, claim=0.01)
    assert pruned == "" and status == "ok"
    assert value == pytest.approx(1 / (1 + 0.05 * 12))  # the scorer's, not the claim
    assert value is not None and value > 1 / 7  # worse than the baseline: not kept


def test_a_curve_that_claims_worse_than_it_is_gets_only_its_own_trial_pruned(
        watched: tuple[ManifestTask, ProgressWatch]) -> None:
    task, watch = watched
    # A fast learner (better than the baseline) that claims a hundred times its loss.
    value, status, pruned = _run(task, watch, 2, rate=1.0, claim=100.0)
    assert pruned.startswith("median rule") and status == "killed" and value is None
    # Its curve stops the liar alone: the baseline's reference is untouched.
    watch.finish(2, TrialStatus.PRUNED)
    assert json.dumps(watch.curves()[0][-1]) == json.dumps([12, 1 / 7])
