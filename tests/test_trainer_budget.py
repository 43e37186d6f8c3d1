"""Issue 11, finding 2: a candidate cannot buy training time or pick its seed.

The training budget is bounded outside the candidate's process (TrainBound in
controller/research/tasks/trainer_run.py): the sandbox measures phase 1's wall and CPU
time, and a phase over budget + allowance ends as `over_budget`, is not evaluated, and
never kept. The attack edits really train longer (the sensitivity twin shows it with a
bound that is too wide to bite). The measured allowance of issue 19 is tested in
tests/test_trainer_allowance.py.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from rich.console import Console

from controller.api.convert import event as event_message
from controller.api.convert import run as run_message
from controller.api.gen.bilevel.v1 import sandbox_pb2 as spb
from controller.commands.run import _View
from controller.research.level1.proposer import Proposal, ProposerContext
from controller.research.level1.validate import Validator
from controller.research.settings import TaskSettings
from controller.research.task import TrialOutcome
from controller.research.tasks.trainer import TrainerTask
from controller.research.tasks.trainer_run import OVER_BUDGET, TrainBound, run_in_sandbox
from controller.sandbox.backend import SandboxBackend
from controller.sandbox.spec import JobResult, Status, Timings
from controller.store.records import EventKind, TrialStatus
from tests.conftest import RUNTIMES
from tests.test_loop_harness import SyntheticTask, make_loop, run_settings
from tests.test_trainer_data import tiny_data  # noqa: F401  (session fixture)
from trainer.data import PreparedData
from trainer.knobs import write_knobs
from trainer.presets import PRESETS

PRESET = PRESETS["cpu-tiny"]
BUDGET = 2.0  # a short budget keeps these tests quick
BASELINE = write_knobs(PRESET.train_source(), {"TIME_BUDGET_SECONDS": BUDGET})
# With a short allowance too, for the attack tests that need no honest run to pass: the
# attack overruns 2 + 10 s whatever the host's load (its start-up alone takes ~8 s).
SHORT = replace(PRESET, train_allowance_seconds=10.0)
BOUND = TrainBound.of(SHORT, BUDGET)
CLOCK = "clock = harness.TrainingClock(TIME_BUDGET_SECONDS, WARMUP_STEPS, device, MAX_STEPS)\n"
# The edit of the issue (77 s of training against 15 s under `bilevel train`), scaled:
# 30 s of training against this 2 s budget.
BUY_TIME = BASELINE.replace(CLOCK, CLOCK + "clock.budget_seconds = 15 * TIME_BUDGET_SECONDS\n")
# One the static filter lets through: only the loop condition reads the clock differently.
# 80 s of training overruns cpu-tiny's real bound (2 + 45 s) even on an idle host.
LONGER_LOOP = BASELINE.replace("while not clock.done():",
                               "while clock.training_seconds < 40 * TIME_BUDGET_SECONDS:")


def _result(status: Status, run_s: float, cpu: float | None) -> JobResult:
    return JobResult(status=status, exit_code=0, timings=Timings(run_s=run_s), cpu_seconds=cpu)


def test_the_bound_is_budget_plus_allowance_and_cpu_scales_with_the_cpus() -> None:
    assert BOUND.wall_seconds == BUDGET + SHORT.train_allowance_seconds
    assert BOUND.cpu_seconds == BOUND.wall_seconds * SHORT.train_limits.cpus
    real = TrainBound.of(PRESET)
    assert real.wall_seconds == PRESET.budget_seconds + PRESET.train_allowance_seconds
    assert "fixed" in real.allowance_source
    measured = TrainBound.of(PRESET, 15.0, 9.5, "measured")
    assert measured.wall_seconds == 24.5 and measured.allowance_source == "measured"
    assert BOUND.violation(_result(Status.OK, BOUND.wall_seconds - 1, 1.0)) == ""
    assert "wall time" in BOUND.violation(_result(Status.OK, BOUND.wall_seconds + 1, 1.0))
    assert "wall time" in BOUND.violation(_result(Status.TIMEOUT, BOUND.wall_seconds + 1, None))
    assert "wall time" in BOUND.violation(_result(Status.TIMEOUT, BOUND.wall_seconds, None))
    assert "CPU time" in BOUND.violation(_result(Status.OK, 1.0, BOUND.cpu_seconds + 1))
    assert "cannot be verified" in BOUND.violation(_result(Status.OK, 1.0, None))
    assert BOUND.violation(_result(Status.ERROR, 1.0, None)) == ""  # an ordinary crash


def test_reported_training_may_pass_the_budget_by_a_quarter_and_two_steps_only() -> None:
    def reported(seconds: float, steps: int) -> JobResult:
        return replace(_result(Status.OK, 5.0, 5.0), metrics={
            "training_seconds": seconds, "num_steps": steps})

    assert BOUND.violation(reported(2.9, 10)) == ""  # 2.5 + 2 x 0.29
    assert "reports 3.2 s of training" in BOUND.violation(reported(3.2, 10))
    assert BOUND.violation(reported(4.0, 2)) == ""  # two steps of 2 s: the last overshot
    assert BOUND.violation(replace(_result(Status.OK, 5.0, 5.0), metrics={})) == ""
    assert BOUND.reported_limit({"training_seconds": 100.0, "num_steps": 1000}) == (
        100.0, 1.25 * BUDGET + 0.2)
    assert replace(BOUND, check_reported=False).violation(reported(3.2, 10)) == ""


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_deny_buying_training_time_by_rebinding_the_clock_budget(
        executor: SandboxBackend, tiny_data: PreparedData, runtime: str) -> None:  # noqa: F811
    outcome = run_in_sandbox(executor, BUY_TIME, SHORT, tiny_data, runtime=runtime,
                             budget_seconds=BUDGET)
    assert not outcome.ok and outcome.status == OVER_BUDGET, outcome.error
    assert outcome.eval is None and outcome.metrics["val_bpb"] is None  # never evaluated
    assert outcome.train.status is Status.TIMEOUT  # killed at the bound, not at 120 s
    assert BOUND.wall_seconds <= outcome.train.timings.run_s < BOUND.wall_seconds + 15
    assert "over the bound" in outcome.error
    assert outcome.metrics["train_bound"]["wall_bound_s"] == BOUND.wall_seconds


@pytest.mark.docker
@pytest.mark.slow
def test_buying_training_time_works_without_the_outside_bound(
        executor: SandboxBackend, tiny_data: PreparedData) -> None:  # noqa: F811
    """Sensitivity twin: under a bound too wide to bite (and no check of the reported
    seconds) the same edit trains 15x its budget, ok."""
    wide = replace(BOUND, wall_seconds=1e6, cpu_seconds=1e6, check_reported=False)
    outcome = run_in_sandbox(executor, BUY_TIME, SHORT, tiny_data, bound=wide)
    assert outcome.ok and outcome.status == "", outcome.error
    assert outcome.metrics["training_seconds"] >= 15 * BUDGET
    assert outcome.train.timings.run_s > BOUND.wall_seconds + 15
    assert isinstance(outcome.metrics["val_bpb"], float)


@dataclass
class _Edits:
    """Proposes each source in turn, as a code-mode LLM would."""

    sources: list[str]
    label: str = "scripted edits"
    fixes_crashes: bool = False

    def propose(self, ctx: ProposerContext) -> Proposal:
        return Proposal(changes={}, description=f"edit {ctx.trial_index}",
                        source=self.sources[ctx.trial_index - 1])


@pytest.mark.docker
@pytest.mark.slow
def test_deny_an_over_budget_trial_is_recorded_and_shown_as_over_budget_and_not_kept(
        tmp_path: Path, executor: SandboxBackend, tiny_data: PreparedData) -> None:  # noqa: F811
    task = TrainerTask(TaskSettings(preset="cpu-tiny", train_py=BASELINE), executor)
    assert task.budget_seconds == BUDGET
    Validator(task, task.search_space()).code(BASELINE, LONGER_LOOP)  # the filter passes it
    settings = run_settings(1)
    parts = make_loop(tmp_path, task, settings,  # type: ignore[arg-type]
                      proposer=_Edits([LONGER_LOOP]), use_memory=False)
    parts.loop.run()
    baseline, trial = parts.store.trials("run-test")
    assert baseline.status is TrialStatus.KEEP and baseline.job_status == "ok"
    assert trial.status is TrialStatus.CRASH and trial.job_status == OVER_BUDGET
    assert trial.val_bpb is None and "over the bound" in trial.metrics["decision"]
    run = parts.store.get_run("run-test")
    assert run.best_trial == 0 and run.best_val_bpb == baseline.val_bpb

    finished = [e for e in parts.store.events_after("run-test", 0)
                if e.kind is EventKind.TRIAL_FINISHED]
    message = event_message(finished[-1]).trial_finished
    assert message.job_status == spb.JOB_STATUS_OVER_BUDGET
    shown = io.StringIO()  # what `bilevel run` prints for that event off a terminal
    view = _View(run_message(run), Console(file=shown, force_terminal=False))
    view.update(event_message(finished[-1]))
    assert "over_budget" in shown.getvalue()
    tsv = (tmp_path / "runs" / "run-test" / "results.tsv").read_text().splitlines()
    assert tsv[2].split("\t")[3] == OVER_BUDGET

    from controller.analysis.data import RunData
    from controller.analysis.report import run_report

    report = run_report(RunData(run, parts.store.trials("run-test"), "", []))
    assert "over_budget / seed_ignored | 1 / 0" in report.markdown


class _SeedIgnoring(SyntheticTask):
    """The synthetic task, but a candidate marked IGNORES_SEED runs on one fixed seed:
    what a hard-coded torch.manual_seed(1234) does to a deterministic trainer."""

    def evaluate(self, source: str, seed: int, cancel: threading.Event) -> TrialOutcome:
        return super().evaluate(source, 1234 if "IGNORES_SEED" in source else seed, cancel)


def test_deny_a_candidate_that_ignores_the_seed_is_flagged_and_not_kept(
        tmp_path: Path) -> None:
    task = _SeedIgnoring()
    base = task.baseline_source()
    better = task.apply(base, {"MATRIX_LR": 0.08})  # a true gain of ~60 sigma
    settings = run_settings(2, keep_rule="noise", noise_seeds=3)
    parts = make_loop(tmp_path, task, settings, use_memory=False,
                      proposer=_Edits([better + "IGNORES_SEED = True\n", better]))
    parts.loop.run()
    _, ignoring, honest = parts.store.trials("run-test")
    assert ignoring.status is TrialStatus.CRASH and ignoring.job_status == "seed_ignored"
    assert ignoring.val_bpb is None and "ignores the trial seed" in ignoring.metrics["decision"]
    seeds = [e["seed"] for e in ignoring.metrics["evaluations"]]
    assert len(set(seeds)) == 2  # it did get two different seeds
    assert honest.status is TrialStatus.KEEP  # the same change, honest, is kept
    assert parts.store.get_run("run-test").best_trial == 2
    tsv = (tmp_path / "runs" / "run-test" / "results.tsv").read_text().splitlines()
    assert tsv[2].split("\t")[3] == "seed_ignored"


def test_the_harness_seed_is_the_controllers_and_fixed_at_import(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    code = ("import os\nfrom trainer import harness\nos.environ['TRIAL_SEED'] = '1234'\n"
            "print(harness.seed(42))\n")
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root}
    for given, printed in (("7", "7"), ("", "42")):
        out = subprocess.run([sys.executable, "-c", code], env={**env, "TRIAL_SEED": given},
                             capture_output=True, text=True, check=True, cwd=tmp_path)
        assert out.stdout.strip() == printed
    bad = subprocess.run([sys.executable, "-c", code], env={**env, "TRIAL_SEED": "x"},
                         capture_output=True, text=True, check=False, cwd=tmp_path)
    assert bad.returncode != 0 and "not an integer seed" in bad.stderr



def test_a_seed_ignoring_candidate_is_kept_without_the_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sensitivity twin: with the bit-identity check off, the same candidate is kept."""
    from controller.research.level1 import evaluation

    monkeypatch.setattr(evaluation, "seed_ignored", lambda runs: None)
    task = _SeedIgnoring()
    better = task.apply(task.baseline_source(), {"MATRIX_LR": 0.08})
    parts = make_loop(tmp_path, task, run_settings(1, keep_rule="noise", noise_seeds=3),
                      use_memory=False, proposer=_Edits([better + "IGNORES_SEED = True\n"]))
    parts.loop.run()
    ignoring = parts.store.trials("run-test")[1]
    assert ignoring.status is TrialStatus.KEEP and ignoring.job_status == "ok"
    values = [e["val_bpb"] for e in ignoring.metrics["evaluations"]]
    assert len(values) == 2 and values[0] == values[1]  # bit-identical, yet kept
