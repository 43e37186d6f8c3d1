"""Adapter from the real trainer (trainer/presets.py, knobs.py; trainer_run.py) to the Task
protocol: the preset's train.py, its typed knob ranges, and the two-phase sandboxed
evaluation (train with the train split, then the trusted evaluator computes val_bpb).

The training budget is the baseline's TIME_BUDGET_SECONDS (the run's own definition;
no candidate can move it) and is enforced outside the candidate (trainer_run.py's
TrainBound): a phase 1 over it is job status `over_budget`, a crash that is never kept.
The baseline's own runs are trusted and measure this host (trainer/calibration.py): a
candidate's allowance beyond the budget and its evaluation's time limit come from them.
A candidate evaluated before any baseline run was measured (a resumed run) first runs
the baseline once to measure. The baseline runs under the preset's fixed allowance.

The trial's seed reaches train.py through the environment (harness.seed). The seed
check (`seed_check_runs`) runs a candidate at SEED_CHECK_STEPS fixed steps on two seeds:
runs that do not depend on timing, so bit-identical results mean the seed is ignored."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import structlog

from controller.errors import FieldError
from controller.research.level1.protect import TRAINER, Protected
from controller.research.level1.space import SearchSpace
from controller.research.settings import TaskSettings
from controller.research.task import TrialOutcome, outcome_from_job
from controller.research.tasks.gpt_ranges import gpt_search_space
from controller.research.tasks.trainer_run import OVER_BUDGET, TrainBound, run_in_sandbox
from controller.sandbox.backend import SandboxBackend
from trainer import knobs as knob_io
from trainer.calibration import HostCalibration
from trainer.direct import RunOutcome
from trainer.knobs import KnobValue
from trainer.presets import PRESETS, Preset

log = structlog.get_logger(__name__)
SEED_KNOB = "SEED"
SEED_CHECK_STEPS = 2  # optimizer steps of a seed-check run: init and data order show


def preset_names() -> tuple[str, ...]:
    return tuple(PRESETS)


class TrainerTask:
    protected: Protected = TRAINER

    def __init__(self, settings: TaskSettings, executor: SandboxBackend) -> None:
        if settings.data_ref:
            raise FieldError("task.data_ref", "trainer presets prepare their own data; a "
                             "data reference is not supported yet")
        self.preset: Preset = PRESETS[settings.preset]
        self.name = self.preset.name
        self.description = (
            "Lower val_bpb (validation bits per byte of held-out text; lower is better) of "
            "the small GPT that train.py trains for a fixed wall-clock budget "
            f"(preset {self.preset.name}). Knobs are the top-level constants; the model, "
            "optimizer (Muon + AdamW) and loop follow. val_bpb is computed afterwards by a "
            "trusted evaluator that train.py cannot see or change.")
        self.executor = executor
        self.runtime = settings.runtime
        self._baseline = settings.train_py or self.preset.train_source()
        try:
            self._space = gpt_search_space(self._baseline)
        except SyntaxError as exc:
            raise FieldError("task.train_py", f"does not parse: {exc}") from None
        budget = knob_io.read_knobs(self._baseline).get("TIME_BUDGET_SECONDS",
                                                        self.preset.budget_seconds)
        if not isinstance(budget, int | float) or isinstance(budget, bool) or budget < 0:
            raise FieldError("task.train_py", "TIME_BUDGET_SECONDS must be a number >= 0, "
                             f"got {budget!r}")
        self.budget_seconds = float(budget)  # the bound's budget: the baseline's, not a trial's
        self._data: Any = None
        self._data_lock = threading.Lock()
        self.calibration = HostCalibration()
        self._calibrating = threading.Lock()

    def baseline_source(self) -> str:
        return self._baseline

    def search_space(self) -> SearchSpace:
        return self._space

    def read_knobs(self, source: str) -> dict[str, Any]:
        return dict(knob_io.read_knobs(source))

    def apply(self, source: str, changes: dict[str, KnobValue]) -> str:
        return knob_io.write_knobs(source, changes)

    def _prepared(self) -> Any:
        from trainer.data import prepare

        with self._data_lock:  # tokenizing is slow: once per task, on first use
            if self._data is None:
                self._data = prepare(self.preset.data)
            return self._data

    def parallel_note(self, trials: int) -> str:
        """What running `trials` at once means on this host: "" when the host has the
        cores for all of them, else the sentence the run logs (controller/sandbox/cores)."""
        gate = self.executor.cores
        return gate.plan(trials, self.preset.train_limits.cpus) if gate is not None else ""

    def evaluate(self, source: str, seed: int, cancel: threading.Event) -> TrialOutcome:
        baseline = source == self._baseline
        if not baseline:
            self._measure_host(cancel)
        outcome = self._run(source, seed, cancel, trusted=baseline)
        if baseline:
            self._record(outcome)
        return self._outcome(outcome)

    def seed_check_runs(self, source: str, seeds: Sequence[int],
                        cancel: threading.Event) -> list[tuple[int, TrialOutcome]]:
        """`source` on each seed at SEED_CHECK_STEPS fixed steps, one after another."""
        self._measure_host(cancel)
        runs = []
        for seed in seeds:
            if cancel.is_set():
                break
            outcome = self._run(source, seed, cancel, trusted=False,
                                fixed_steps=SEED_CHECK_STEPS)
            runs.append((seed, self._outcome(outcome)))
        return runs

    def _run(self, source: str, seed: int, cancel: threading.Event, trusted: bool,
             fixed_steps: int = 0) -> RunOutcome:
        if SEED_KNOB in knob_io.read_knobs(source):
            source = knob_io.write_knobs(source, {SEED_KNOB: seed})
        if trusted:  # the baseline's own runs: the preset's bound; its report is trusted
            bound = replace(TrainBound.of(self.preset, self.budget_seconds),
                            check_reported=False)
        else:
            allowance = self.calibration.allowance(self.preset)
            bound = TrainBound.of(self.preset, self.budget_seconds, allowance.seconds,
                                  allowance.source)
        return run_in_sandbox(
            self.executor, source, self.preset, data=self._prepared(), runtime=self.runtime,
            cancel=cancel, seed=seed, bound=bound, fixed_steps=fixed_steps,
            eval_seconds=lambda size: self.calibration.eval_seconds(self.preset, size))

    def _measure_host(self, cancel: threading.Event) -> None:
        """Run the baseline once if no baseline run has measured this host yet."""
        with self._calibrating:
            if self.calibration.measured or cancel.is_set():
                return
            log.info("measuring the host with one baseline run before the first candidate")
            outcome = self._run(self._baseline, 0, cancel, trusted=True)
            if not self._record(outcome):
                log.warning("the baseline run that measures this host failed; candidates "
                            "get the preset's fixed allowance", error=outcome.error)

    def _record(self, outcome: RunOutcome) -> bool:
        from trainer.summary import MODEL_FILE

        training = outcome.metrics.get("training_seconds")
        if not outcome.ok or outcome.eval is None or not isinstance(training, int | float):
            return False
        self.calibration.record(outcome.train.timings.run_s, float(training),
                                outcome.eval.timings.run_s,
                                len(outcome.train.files.get(MODEL_FILE, b"")))
        return True

    def _outcome(self, outcome: RunOutcome) -> TrialOutcome:
        metrics = dict(outcome.metrics)
        metrics["host_calibration"] = self.calibration.to_json()
        peak_mb = metrics.get("peak_vram_mb") or metrics.get("peak_rss_mb") or 0.0
        metrics["memory_gb"] = float(peak_mb) / 1024
        phase = outcome.eval if outcome.eval is not None and not outcome.ok else None
        job = phase or (outcome.train if not outcome.ok else outcome.eval)
        result = outcome_from_job(job, metrics)
        text = outcome_from_job(outcome.train, {}).log if outcome.train is not None else ""
        if outcome.eval is not None:
            text += "\n=== trusted evaluation ===\n" + outcome_from_job(outcome.eval, {}).log
        detail = outcome.error or result.detail
        nodes = [str(getattr(j, "node", "")) for j in (outcome.train, outcome.eval)
                 if j is not None]
        node = ",".join(dict.fromkeys(n for n in nodes if n))
        if outcome.status == OVER_BUDGET:
            return TrialOutcome(job_status=OVER_BUDGET, val_bpb=None,
                                memory_gb=metrics["memory_gb"], metrics=metrics, log=text,
                                seconds=outcome.train.timings.run_s, detail=detail,
                                node=node)
        return TrialOutcome(job_status=result.job_status if not outcome.ok else "ok",
                            val_bpb=result.val_bpb if outcome.ok else None,
                            memory_gb=metrics["memory_gb"], metrics=metrics,
                            exception=result.exception, log=text,
                            seconds=metrics.get("total_seconds", result.seconds),
                            detail=detail, node=node)
