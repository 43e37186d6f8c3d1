"""Issue 19 #3: the seed rule under timing noise. Two time-budgeted runs are never
bit-identical (their step counts follow the host), so a candidate that ignores the trial
seed is caught by runs at a fixed step count on two seeds instead: the seed check
(research/level1/evaluation.py, TrainerTask.seed_check_runs). It runs only for a
candidate the keep rule would keep.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controller.research.level1 import evaluation
from controller.research.level1.protect import TRAINER
from controller.research.settings import TaskSettings
from controller.research.task import TrialOutcome
from controller.research.tasks.trainer import SEED_CHECK_STEPS, TrainerTask
from controller.sandbox.backend import SandboxBackend
from controller.store.records import TrialStatus
from tests.test_loop_harness import SyntheticTask, make_loop, run_settings
from tests.test_trainer_budget import _Edits
from trainer.knobs import write_knobs
from trainer.presets import PRESETS
from trainer.summary import FIXED_STEPS_ENV

BASELINE = write_knobs(PRESETS["cpu-tiny"].train_source(), {"TIME_BUDGET_SECONDS": 4.0})
INIT = """            elif p.ndim == 2 and name.startswith("blocks."):
                p.uniform_(-bound, bound)
        self.wte.weight.normal_(0.0, 1.0)
        for emb in self.value_embeds.values():
            emb.weight.uniform_(-bound, bound)
        self.lm_head.weight.normal_(0.0, 0.001)
"""
# Ignores the trial seed without naming a seed: weights from a formula, not the RNG, and
# batches drawn in the order of a constant. The static filter cannot tell it from an
# honest edit of the init and the data order.
FORMULA = """def formula_init(p, scale):
    p.copy_(torch.sin(torch.arange(p.numel(), dtype=p.dtype) * 12.9898).mul(scale).view_as(p))


"""
SEED_FREE = BASELINE
for old, new in [
    (INIT, """            elif p.ndim == 2 and name.startswith("blocks."):
                formula_init(p, bound)
        formula_init(self.wte.weight, 1.7)
        for emb in self.value_embeds.values():
            formula_init(emb.weight, bound)
        formula_init(self.lm_head.weight, 0.0017)
"""),
    ("class GPT(nn.Module):", FORMULA + "class GPT(nn.Module):"),
    ("        x, y = next(batches)\n", "        x, y = map(torch.from_numpy, next(order))\n"),
    ("clock = harness.TrainingClock(",
     "order = data.batches(DEVICE_BATCH_SIZE, SEQ_LEN, 1234)\nclock = harness.TrainingClock("),
]:
    assert old in SEED_FREE
    SEED_FREE = SEED_FREE.replace(old, new)
HONEST = BASELINE + "# an unchanged copy\n"


def test_a_fixed_step_run_stops_after_its_steps_whatever_the_budget(tmp_path: Path) -> None:
    code = ("import torch\nfrom trainer import harness\n"
            "clock = harness.TrainingClock(0.0, 1, torch.device('cpu'))\n"
            "while not clock.done():\n    clock.start_step()\n    clock.end_step()\n"
            "print(clock.steps, clock.progress())\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for given, printed in (("3", "3 1.0"), ("", "0 1.0")):  # "": the 0 s budget is spent
        out = subprocess.run([sys.executable, "-c", code], env={**env, FIXED_STEPS_ENV: given},
                             capture_output=True, text=True, check=True, cwd=tmp_path)
        assert out.stdout.strip() == printed
    bad = subprocess.run([sys.executable, "-c", code], env={**env, FIXED_STEPS_ENV: "0"},
                         capture_output=True, text=True, check=False, cwd=tmp_path)
    assert bad.returncode != 0 and "not a positive step count" in bad.stderr


def test_the_seed_free_edit_passes_the_static_filter() -> None:
    assert SEED_FREE.count("formula_init(") == 5 and "next(order)" in SEED_FREE
    TRAINER.check(BASELINE, SEED_FREE)


@pytest.mark.docker
@pytest.mark.slow
def test_deny_a_seed_ignoring_candidate_is_flagged_by_the_fixed_step_check(
        executor: SandboxBackend) -> None:
    task = TrainerTask(TaskSettings(preset="cpu-tiny", train_py=BASELINE), executor)
    result = evaluation.evaluate(task, SEED_FREE, [11], threading.Event(),
                                 keeps=lambda values: True)
    assert result is not None and result.seed_checked
    outcome = result.outcome
    assert outcome.job_status == evaluation.SEED_IGNORED and outcome.val_bpb is None
    assert "ignores the trial seed" in outcome.detail
    check = outcome.metrics["seed_check"]
    assert [c["seed"] for c in check] == [11, 12]
    assert check[0]["val_bpb"] == check[1]["val_bpb"] is not None  # bit-identical
    assert all(c["num_steps"] == SEED_CHECK_STEPS for c in check)
    print(f"\nseed check of the seed-free edit: {check}; whole evaluation "
          f"{result.ended_at - result.started_at:.1f} s")


@pytest.mark.docker
@pytest.mark.slow
def test_a_seed_ignoring_candidate_passes_the_time_budgeted_confirmation(
        executor: SandboxBackend) -> None:
    """Sensitivity twin: with the fixed-step check not asked for, only the old rule
    looks (two time-budgeted runs on two seeds), and it never sees bit-identity."""
    task = TrainerTask(TaskSettings(preset="cpu-tiny", train_py=BASELINE), executor)
    result = evaluation.evaluate(task, SEED_FREE, [11, 12], threading.Event(),
                                 confirm=lambda value: True)
    assert result is not None and result.seed_checked is None
    assert result.outcome.job_status == "ok" and len(result.values) == 2
    assert result.values[0] != result.values[1]  # timing moved them apart
    assert "seed_check" not in result.outcome.metrics


@pytest.mark.docker
@pytest.mark.slow
def test_allow_an_honest_candidate_passes_the_seed_check(executor: SandboxBackend) -> None:
    task = TrainerTask(TaskSettings(preset="cpu-tiny", train_py=BASELINE), executor)
    result = evaluation.evaluate(task, HONEST, [11], threading.Event(),
                                 keeps=lambda values: True)
    assert result is not None and result.seed_checked
    assert result.outcome.job_status == "ok", result.outcome.detail
    check = result.outcome.metrics["seed_check"]
    assert check[0]["val_bpb"] != check[1]["val_bpb"]
    print(f"\nseed check of an honest candidate: {check}")


@dataclass
class _Checked(SyntheticTask):
    """The synthetic task with a seed check: a candidate marked IGNORES_SEED gives one
    value on every seed, as a fixed-step run of a seed-ignoring trainer does."""

    checked: list[str] = field(default_factory=list)

    def seed_check_runs(self, source: str, seeds: Sequence[int],
                        cancel: threading.Event) -> list[tuple[int, TrialOutcome]]:
        self.checked.append(source)
        fixed = "IGNORES_SEED" in source
        return [(s, self.evaluate(source, 1234 if fixed else s, cancel)) for s in seeds]


def test_the_seed_check_runs_only_for_a_candidate_the_rule_would_keep(
        tmp_path: Path) -> None:
    task = _Checked()
    base = task.baseline_source()
    better = task.apply(base, {"MATRIX_LR": 0.08})  # a true gain of ~60 sigma
    worse = task.apply(base, {"DEPTH": 4})
    parts = make_loop(tmp_path, task, run_settings(3, keep_rule="greedy"), use_memory=False,
                      proposer=_Edits([worse, better + "IGNORES_SEED = True\n", better]))
    parts.loop.run()
    _, discarded, ignoring, honest = parts.store.trials("run-test")
    assert discarded.status is TrialStatus.DISCARD and "seed_check" not in discarded.metrics
    assert ignoring.status is TrialStatus.CRASH and ignoring.job_status == "seed_ignored"
    assert honest.status is TrialStatus.KEEP and len(honest.metrics["seed_check"]) == 2
    sources = [parts.artifacts.read_trial("run-test", i, "train.py").decode() for i in (2, 3)]
    assert task.checked == sources  # the discarded candidate was never checked


def test_a_check_run_that_crashes_leaves_the_candidate_unkept() -> None:
    ok = TrialOutcome(job_status="ok", val_bpb=1.0, metrics={"num_steps": 2})
    crash = TrialOutcome(job_status="over_budget", val_bpb=None, detail="too slow")
    out = evaluation.checked(ok, [(1, ok), (2, crash)])
    assert out.crashed and out.job_status == "over_budget" and "too slow" in out.detail
    same = evaluation.checked(ok, [(1, ok), (2, ok)])
    assert same.job_status == evaluation.SEED_IGNORED
    other = TrialOutcome(job_status="ok", val_bpb=1.5, metrics={"num_steps": 2})
    fine = evaluation.checked(ok, [(1, ok), (2, other)])
    assert fine.job_status == "ok" and fine.val_bpb == 1.0
    assert [c["val_bpb"] for c in fine.metrics["seed_check"]] == [1.0, 1.5]
