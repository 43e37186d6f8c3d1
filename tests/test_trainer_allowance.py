"""Issue 19 #2 and #4: phase 1's allowance beyond the budget is measured on the host from
the trusted baseline's own runs, and phase 2's time limit follows the measured speed.

The edit that trains 2.6x its budget while passing the static filter came back `ok`
under the old fixed allowance of 45 s; under the measured one it is `over_budget` and
honest trials stay inside it. The reported training seconds are checked too. Each deny
test has a twin that runs the same edit with only that protection taken back.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from controller.research.level1.protect import TRAINER
from controller.research.settings import TaskSettings
from controller.research.tasks.trainer import TrainerTask
from controller.research.tasks.trainer_run import OVER_BUDGET, TrainBound, run_in_sandbox
from controller.sandbox.backend import SandboxBackend
from tests.conftest import RUNTIMES
from tests.test_trainer_data import tiny_data  # noqa: F401  (session fixture)
from trainer.calibration import EVAL_CAP, OVERHEAD_MARGIN, HostCalibration
from trainer.data import PreparedData
from trainer.presets import PRESETS

PRESET = PRESETS["cpu-tiny"]
BUDGET = PRESET.budget_seconds  # the issue's 15 s
BASELINE = PRESET.train_source()
CLOCK = "clock = harness.TrainingClock(TIME_BUDGET_SECONDS, WARMUP_STEPS, device, MAX_STEPS)\n"
# An honest candidate that is not the baseline's exact text: it gets a candidate's bound.
HONEST = BASELINE + "# an unchanged copy\n"
# The issue's edit: the loop reads the clock differently and trains 2.8 x 15 s = 42 s.
STRETCH = BASELINE.replace("while not clock.done():",
                           "while clock.training_seconds < 2.8 * TIME_BUDGET_SECONDS:")
# Training the clock never sees: 1.6 budgets of steps before it starts, then the honest
# loop, which reports an honest 15 s. 2.6 budgets of training in all.
UNTIMED = BASELINE.replace(CLOCK, """import time

until = time.perf_counter() + 1.6 * TIME_BUDGET_SECONDS
while time.perf_counter() < until:
    for _ in range(grad_accum):
        x, y = next(batches)
        logits = forward(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        (loss / grad_accum).backward()
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
""" + CLOCK)
OLD = TrainBound.of(PRESET)  # budget + the preset's fixed 45 s


def test_the_allowance_is_the_presets_until_a_baseline_run_is_measured() -> None:
    calibration = HostCalibration()
    before = calibration.allowance(PRESET)
    assert before.seconds == PRESET.train_allowance_seconds and "no baseline" in before.source
    calibration.record(run_seconds=21.0, training_seconds=15.0, eval_seconds=8.0,
                       archive_bytes=2_000_000)
    calibration.record(run_seconds=22.5, training_seconds=15.5, eval_seconds=6.0,
                       archive_bytes=2_000_000)
    after = calibration.allowance(PRESET)
    assert after.seconds == OVERHEAD_MARGIN * 7.0 + PRESET.allowance_floor_seconds
    assert "2 baseline run(s)" in after.source
    assert [r["overhead_s"] for r in calibration.to_json()["baseline_runs"]] == [6.0, 7.0]
    with pytest.raises(ValueError, match="not a measurement"):
        calibration.record(21.0, 15.0, 8.0, archive_bytes=0)


def test_the_evaluation_limit_scales_with_the_archive_and_the_measured_speed() -> None:
    calibration = HostCalibration()
    fixed = PRESET.eval_limits.wall_seconds
    assert calibration.eval_seconds(PRESET, 10**9) == fixed  # nothing measured yet
    calibration.record(21.0, 15.0, eval_seconds=20.0, archive_bytes=2_000_000)
    assert calibration.eval_seconds(PRESET, 2_000_000) == fixed  # 60 s: never below it
    assert calibration.eval_seconds(PRESET, 4_000_000) == 120.0  # 3 x 40 s predicted
    calibration.record(21.0, 15.0, eval_seconds=40.0, archive_bytes=2_000_000)
    assert calibration.eval_seconds(PRESET, 4_000_000) == 240.0  # the slowest run counts
    assert calibration.eval_seconds(PRESET, 10**9) == EVAL_CAP * fixed


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_deny_training_outside_the_clock_is_over_budget_under_the_measured_allowance(
        executor: SandboxBackend, runtime: str) -> None:
    task = TrainerTask(TaskSettings(preset="cpu-tiny", runtime=runtime), executor)
    for edit in (UNTIMED, STRETCH):
        TRAINER.check(BASELINE, edit)  # the static filter lets both through
    cancel = threading.Event()
    baseline = task.evaluate(BASELINE, 1, cancel)  # trusted: it measures the host
    assert baseline.job_status == "ok", baseline.detail
    assert baseline.metrics["train_bound"]["allowance_s"] == PRESET.train_allowance_seconds
    allowance = task.calibration.allowance(PRESET)
    assert allowance.seconds < PRESET.train_allowance_seconds

    honest = task.evaluate(HONEST, 2, cancel)
    assert honest.job_status == "ok", honest.detail
    bound = honest.metrics["train_bound"]
    assert bound["wall_bound_s"] == BUDGET + allowance.seconds
    assert bound["wall_s"] < bound["wall_bound_s"] and "baseline run" in bound["allowance_source"]
    archive = honest.metrics["archive_bytes"]  # phase 2's limit, from the measured speed
    assert honest.metrics["eval_bound_s"] == task.calibration.eval_seconds(PRESET, archive)

    for edit in (UNTIMED, STRETCH):
        attack = task.evaluate(edit, 3, cancel)
        assert attack.job_status == OVER_BUDGET and attack.val_bpb is None, attack.detail
        assert "over the bound" in attack.detail
    print(f"\n{runtime}: baseline overhead {task.calibration.to_json()}, allowance "
          f"{allowance.seconds} s; honest phase 1 {bound['wall_s']:.1f} s of "
          f"{bound['wall_bound_s']} s, eval limit {honest.metrics['eval_bound_s']} s")


@pytest.mark.docker
@pytest.mark.slow
def test_training_outside_the_clock_is_accepted_with_the_old_fixed_allowance(
        executor: SandboxBackend, tiny_data: PreparedData) -> None:  # noqa: F811
    """Sensitivity twin: the same edit under the old 15 + 45 s bound comes back ok,
    having trained 2.6 budgets while it reports one."""
    outcome = run_in_sandbox(executor, UNTIMED, PRESET, tiny_data, bound=OLD)
    assert outcome.ok and isinstance(outcome.metrics["val_bpb"], float), outcome.error
    assert outcome.metrics["training_seconds"] < BUDGET + 5
    assert outcome.train.timings.run_s > 2.6 * BUDGET
    print(f"\nuntimed edit under the old bound: phase 1 {outcome.train.timings.run_s:.1f} s, "
          f"val_bpb {outcome.metrics['val_bpb']:.4f}")


@pytest.mark.docker
@pytest.mark.slow
def test_deny_reporting_training_past_the_budget_is_over_budget(
        executor: SandboxBackend, tiny_data: PreparedData) -> None:  # noqa: F811
    outcome = run_in_sandbox(executor, STRETCH, PRESET, tiny_data, bound=OLD)
    assert outcome.status == OVER_BUDGET and outcome.eval is None, outcome.error
    assert "train.py reports" in outcome.error
    assert outcome.metrics["train_bound"]["reported_training_s"] >= 2.8 * BUDGET


@pytest.mark.docker
@pytest.mark.slow
def test_the_issues_stretching_edit_is_kept_without_the_reported_seconds_check(
        executor: SandboxBackend, tiny_data: PreparedData) -> None:  # noqa: F811
    """Sensitivity twin, and the issue's observation: under the old fixed allowance and
    no check of what it reports, the 42 s edit comes back ok with a better val_bpb."""
    outcome = run_in_sandbox(executor, STRETCH, PRESET, tiny_data,
                             bound=replace(OLD, check_reported=False))
    assert outcome.ok and isinstance(outcome.metrics["val_bpb"], float), outcome.error
    assert outcome.metrics["training_seconds"] >= 2.8 * BUDGET
    print(f"\nstretching edit under the old bound: phase 1 {outcome.train.timings.run_s:.1f} "
          f"s, training {outcome.metrics['training_seconds']:.1f} s, val_bpb "
          f"{outcome.metrics['val_bpb']:.4f}")
