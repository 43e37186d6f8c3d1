"""A task directory's candidate cannot see the eval data or the scorer, and cannot set
its own metric: the trusted scorer's number is the trial's (real engine, runc and
runsc). The sensitivity twins weaken the task here, in the test (the scorer's files and
mounts handed to phase 1; the metric taken from phase 1), and show the same candidate
winning."""

from __future__ import annotations

import json
import textwrap
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from controller.research.tasks import generic
from controller.research.tasks.generic import ManifestTask
from controller.research.tasks.manifest import load_task_dir
from controller.sandbox.backend import SandboxBackend
from controller.sandbox.spec import JobResult
from tests.conftest import RUNTIMES

pytestmark = pytest.mark.docker

MANIFEST = """\
name = "deny-task"
editable = "train.py"
metric = "loss"
direction = "minimize"

[train]
command = ["python3", "train.py"]
mounts = {"data/train" = "/data/train"}
wall_seconds = 60
memory_mb = 256

[score]
command = ["python3", "score.py"]
mounts = {"data/eval" = "/data/eval"}
wall_seconds = 60
memory_mb = 256
"""

SCORER = """\
import json
x = json.load(open("out/x.json"))["x"]
target = float(open("/data/eval/target.txt").read())
print(json.dumps({"loss": abs(float(x) - target)}))
"""

# The attack: look for the eval target and the scorer everywhere phase 1 might reach
# them, answer with the target if found, and claim a perfect loss on both channels.
CANDIDATE = """\
import json
import os

X = 2.0

seen = {}
for path in ("/data/eval/target.txt", "data/eval/target.txt", "score.py",
             "/data/train/hint.txt"):
    try:
        seen[path] = open(path).read().strip()
    except OSError:
        seen[path] = None
x = float(seen["/data/eval/target.txt"]) if seen["/data/eval/target.txt"] else X
os.makedirs("out", exist_ok=True)
json.dump({"x": x}, open("out/x.json", "w"))
json.dump({"loss": 0.0}, open(os.environ["BILEVEL_METRICS"], "w"))
print("SEEN " + json.dumps(seen))
print(json.dumps({"loss": 0.0}))
"""


def attack_task(root: Path) -> ManifestTask:
    (root / "data/train").mkdir(parents=True)
    (root / "data/eval").mkdir(parents=True)
    (root / "data/train/hint.txt").write_text("train data\n")
    (root / "data/eval/target.txt").write_text("0.5\n")
    (root / "bilevel-task.toml").write_text(MANIFEST)
    (root / "train.py").write_text(CANDIDATE)
    (root / "score.py").write_text(SCORER)
    return ManifestTask(load_task_dir(root), None)


def scorer_visible(task: ManifestTask) -> None:
    """The weakened task: phase 1 runs on the scorer's copy of the task directory (its
    files included) with the scorer's mounts as well as its own."""
    m = task.manifest
    assert m.train is not None and m.score is not None
    task.manifest = replace(m, train=replace(m.train, mounts=m.train.mounts + m.score.mounts))
    task._phase1 = task._phase2


class Recording:
    """A sandbox backend that passes every call through and keeps each job's result."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.results: list[JobResult] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            out = attr(*args, **kwargs)
            if isinstance(out, JobResult):
                self.results.append(out)
            return out
        return call


def metric_from_candidate(task: ManifestTask, monkeypatch: pytest.MonkeyPatch) -> None:
    """The weakened task: the trial's metric is what phase 1 claimed, not the scorer's."""
    jobs = Recording(task.executor)
    monkeypatch.setattr(task, "executor", jobs)
    scorer_metrics = generic.result_metrics
    monkeypatch.setattr(generic, "result_metrics", lambda _: scorer_metrics(jobs.results[0]))


def seen_of(log: str) -> dict[str, str | None]:
    line = next(line for line in log.splitlines() if line.startswith("SEEN "))
    seen: dict[str, str | None] = json.loads(line[5:])
    return seen


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_deny_candidate_reading_eval_data_or_forging_the_metric(
        tmp_path: Path, executor: SandboxBackend, runtime: str) -> None:
    task = attack_task(tmp_path)
    task.executor, task.runtime = executor, runtime
    outcome = task.evaluate(task.baseline_source(), 7, threading.Event())
    assert outcome.job_status == "ok", outcome.log
    seen = seen_of(outcome.log)
    assert seen["/data/eval/target.txt"] is None and seen["data/eval/target.txt"] is None
    assert seen["score.py"] is None  # the scorer is not in phase 1's copy
    assert seen["/data/train/hint.txt"] == "train data"  # its own mount is there
    # The scorer's number (|2.0 - 0.5|), not the 0.0 the candidate wrote twice.
    assert outcome.val_bpb == pytest.approx(1.5)
    assert outcome.metrics == {"loss": pytest.approx(1.5)}


def test_candidate_reads_eval_data_when_the_scorer_is_not_hidden(
        tmp_path: Path, executor: SandboxBackend) -> None:
    task = attack_task(tmp_path)
    task.executor = executor
    scorer_visible(task)
    outcome = task.evaluate(task.baseline_source(), 7, threading.Event())
    assert seen_of(outcome.log)["/data/eval/target.txt"] == "0.5"
    assert outcome.val_bpb == pytest.approx(0.0)  # the leaked target scores perfectly


def test_candidate_forges_the_metric_when_it_is_taken_from_phase_1(
        tmp_path: Path, executor: SandboxBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    task = attack_task(tmp_path)
    task.executor = executor
    metric_from_candidate(task, monkeypatch)
    outcome = task.evaluate(task.baseline_source(), 7, threading.Event())
    assert outcome.val_bpb == pytest.approx(0.0)


def test_hostile_outputs_stay_input_and_the_scorer_failing_is_a_crash(
        tmp_path: Path, executor: SandboxBackend) -> None:
    """Phase 1 writes a fake score.py into its outputs and a model the scorer refuses:
    the trusted score.py runs (from the task's copy), and its failure is the trial's
    crash with no metric, whatever phase 1 printed."""
    task = attack_task(tmp_path)
    task.executor = executor
    hostile = textwrap.dedent("""\
        import json, os
        X = 1.0
        os.makedirs("out", exist_ok=True)
        open("out/score.py", "w").write("print(json.dumps({'loss': 0.0}))")
        open("out/x.json", "w").write("not json")
        print(json.dumps({"loss": 0.0}))
    """)
    outcome = task.evaluate(hostile, 1, threading.Event())
    assert outcome.crashed and outcome.val_bpb is None
    assert "trusted scorer ended with status error" in outcome.detail
    assert "JSONDecodeError" in outcome.log


def test_a_task_without_a_scorer_takes_the_candidates_number_and_says_so(
        tmp_path: Path, executor: SandboxBackend) -> None:
    """No [score]: the metric is phase 1's own (here forged to 0.0), and the trial
    says it is forgeable."""
    from controller.research.task import FORGEABLE

    attack_task(tmp_path)
    manifest = MANIFEST.split("[score]")[0]
    (tmp_path / "bilevel-task.toml").write_text(manifest)
    task = ManifestTask(load_task_dir(tmp_path), executor)
    outcome = task.evaluate(task.baseline_source(), 1, threading.Event())
    assert outcome.val_bpb == 0.0 and outcome.detail == FORGEABLE
    assert FORGEABLE in task.description
