"""Run a candidate train.py end to end on a sandbox backend: train in one sandbox,
evaluate in another.

Phase 1 runs the candidate with only the train split mounted (read-only) and returns
the archived model from /job/out. Its time budget is enforced here, outside the
candidate's process (TrainBound): the backend measures the phase's wall time and the
runner its CPU time, the job is killed at the bound, and a phase over budget + allowance
ends as `over_budget` without an evaluation, whatever the candidate did to its own clock.
The allowance is measured on the host by the task (trainer/calibration.py). A candidate
that reports more training than 1.25 budgets and two steps is over budget too. The
trial's seed goes in as $TRIAL_SEED (harness.seed); a seed-check run also gets
$TRIAL_FIXED_STEPS. Phase 2 runs the trusted `trainer.evaluate` with only the validation
split mounted and the archive as its single input file, under a wall limit the caller may
scale with the archive's size. Both phases hold their cores of the host while they run
(controller/sandbox/cores.py), so time-budgeted jobs never share cores. val_bpb is taken
from phase 2 alone; phase 1's numbers (time, steps, MFU) are reported as the candidate
stated them, after type checks (trainer/direct.py's combine).

This is the host side of the trainer task (tasks/trainer.py); trainer/ itself holds
only what runs in the sandbox, and the trusted helpers both sides share.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from controller.sandbox.backend import SandboxBackend
from controller.sandbox.spec import DataMount, JobResult, JobSpec, Limits, Status
from trainer.data import PreparedData, prepare
from trainer.direct import RunOutcome, combine
from trainer.presets import PhaseLimits, Preset
from trainer.summary import FIXED_STEPS_ENV, MODEL_FILE, SEED_ENV

TRAIN_TARGET = "/data/train"
VAL_TARGET = "/data/val"
EVAL_COMMAND = ("python", "-P", "-m", "trainer.evaluate", "--model", MODEL_FILE,
                "--data", VAL_TARGET)

OVER_BUDGET = "over_budget"
# Reported training may pass the budget by this fraction of it plus this many mean steps:
# the clock stops after the step that crosses the budget, and under load one step can
# take several times the mean (measured: 0.8 s over a 2 s budget, mean step 0.4 s).
REPORTED_SLACK_FRACTION = 0.25
REPORTED_SLACK_STEPS = 2


@dataclass(frozen=True)
class TrainBound:
    """What phase 1 may use, measured outside the candidate: the budget plus an
    allowance of wall time, and that times the job's cpus of CPU time. With
    `check_reported`, the training seconds the candidate reports may not pass the budget
    by more than the slack above: a check of what a candidate says, which catches one
    that trains longer and says so (the trusted baseline's runs skip it)."""

    budget_seconds: float
    wall_seconds: float
    cpu_seconds: float
    allowance_seconds: float = 0.0
    allowance_source: str = ""
    check_reported: bool = True

    @classmethod
    def of(cls, preset: Preset, budget_seconds: float | None = None,
           allowance_seconds: float | None = None, source: str = "") -> TrainBound:
        """The bound for `budget_seconds` (default: the preset's) plus
        `allowance_seconds` (default: the preset's fixed allowance)."""
        budget = preset.budget_seconds if budget_seconds is None else float(budget_seconds)
        allowance = preset.train_allowance_seconds if allowance_seconds is None \
            else float(allowance_seconds)
        wall = budget + allowance
        return cls(budget, wall, wall * preset.train_limits.cpus, allowance,
                   source or f"the preset's fixed {allowance:g} s")

    def violation(self, result: JobResult) -> str:
        """Why `result` broke the bound, or "" when it kept it."""
        wall, cpu = result.timings.run_s, result.cpu_seconds
        budget = f"the {self.budget_seconds:g} s training budget"
        if wall > self.wall_seconds or result.status is Status.TIMEOUT:
            return (f"training ran {wall:.1f} s of wall time, over the bound of "
                    f"{self.wall_seconds:g} s ({budget} + {self.allowance_seconds:g} s "
                    f"allowance: {self.allowance_source})")
        if result.status is not Status.OK:
            return ""
        if cpu is None:
            return "the sandbox reported no CPU time for the training phase, so its " \
                   "budget cannot be verified"
        if cpu > self.cpu_seconds:
            return (f"training used {cpu:.1f} s of CPU time, over the bound of "
                    f"{self.cpu_seconds:g} s ({budget} + allowance, times the job's cpus)")
        reported, limit = self.reported_limit(result.metrics)
        if self.check_reported and reported > limit:
            return (f"train.py reports {reported:.1f} s of training, over {budget} and "
                    f"its slack for the last step ({limit:.1f} s)")
        return ""

    def reported_limit(self, metrics: Any) -> tuple[float, float]:
        """The training seconds phase 1 reported (0 if none) and what it may report."""
        got = combine(metrics, None)
        seconds = float(got.get("training_seconds", 0.0))
        steps = got.get("num_steps", 0)
        step = seconds / steps if steps > 0 else seconds
        return seconds, (1 + REPORTED_SLACK_FRACTION) * self.budget_seconds \
            + REPORTED_SLACK_STEPS * step

    def record(self, result: JobResult) -> dict[str, Any]:
        """For the trial's metrics: what phase 1 used and the bound it was held to."""
        return {"wall_s": result.timings.run_s, "cpu_s": result.cpu_seconds,
                "reported_training_s": self.reported_limit(result.metrics)[0],
                "budget_s": self.budget_seconds, "wall_bound_s": self.wall_seconds,
                "cpu_bound_s": self.cpu_seconds, "allowance_s": self.allowance_seconds,
                "allowance_source": self.allowance_source}


def _limits(phase: PhaseLimits) -> Limits:
    return Limits(wall_seconds=phase.wall_seconds, memory_bytes=phase.memory_bytes,
                  cpus=phase.cpus, pids=phase.pids, returned_file_bytes=phase.returned_file_bytes,
                  tmp_bytes=phase.tmp_bytes, disk_bytes=phase.disk_bytes,
                  output_bytes=4 << 20)


def _describe(result: JobResult, phase: str) -> str:
    text = f"{phase} phase ended with status {result.status.value}"
    if result.exception is not None:
        text += f": {result.exception.type}: {result.exception.message}"
    elif result.detail:
        text += f": {result.detail}"
    return text


def data_refs(executor: SandboxBackend, data: PreparedData) -> tuple[str, str]:
    """The backend's data references of the train and val splits (one copy per
    namespace and data hash)."""
    train, val = (executor.ensure_data(f"data-{data.digest}-{split}", path)
                  for split, path in (("train", data.train_dir), ("val", data.val_dir)))
    return train, val


def eval_job_spec(model: bytes, preset: Preset, val_data: str, runtime: str = "runc",
                  gpu_ids: tuple[str, ...] = (), wall_seconds: float | None = None) -> JobSpec:
    """Phase 2: the trusted evaluator on the archive, through the same hardened
    executor as any job (same runtime, its own preset limits, no network, nothing but
    the archive in /job and the validation split mounted read-only). It reads
    candidate bytes next to that split, so it gets no privilege a job lacks.
    `wall_seconds` replaces the preset's fixed wall limit (see trainer/calibration.py)."""
    limits = _limits(preset.eval_limits)
    if wall_seconds is not None:
        limits = replace(limits, wall_seconds=wall_seconds)
    return JobSpec(files={MODEL_FILE: model}, command=EVAL_COMMAND,
                   limits=limits, runtime=runtime, gpu_ids=gpu_ids,
                   data_mounts=(DataMount(source=val_data, target=VAL_TARGET),),
                   labels={"io.bilevel.phase": "eval"})


def _held(executor: SandboxBackend, spec: JobSpec,
          cancel: threading.Event | None) -> JobResult:
    """Run `spec` while holding its cpus of the host's cores (none to hold on a cluster
    backend); a cancel while waiting for them is a job killed before it started."""
    gate = executor.cores
    if gate is None:
        return executor.run_job(spec, cancel=cancel)
    with gate.hold(spec.limits.cpus, cancel) as held:
        if held:
            return executor.run_job(spec, cancel=cancel)
    return JobResult(status=Status.KILLED, exit_code=None,
                     detail="cancelled while waiting for free cores; the job never started")


def run_in_sandbox(executor: SandboxBackend, train_py: str, preset: Preset,
                   data: PreparedData | None = None, runtime: str = "runc",
                   gpu_ids: tuple[str, ...] = (),
                   cancel: threading.Event | None = None, seed: int = 42,
                   budget_seconds: float | None = None, *, bound: TrainBound | None = None,
                   eval_seconds: Callable[[int], float] | None = None,
                   fixed_steps: int = 0) -> RunOutcome:
    """Train `train_py` (any source) and evaluate it, each phase in its own sandbox.
    Setting `cancel` kills the phase in flight (status killed). `seed` reaches train.py
    as harness.seed(). `bound` (default: TrainBound.of the preset and `budget_seconds`)
    limits phase 1; `eval_seconds(archive bytes)` gives phase 2's wall limit (default:
    the preset's); `fixed_steps` > 0 makes the training clock stop after that many steps
    whatever the time (the seed check)."""
    data = data or prepare(preset.data)
    train_data, val_data = data_refs(executor, data)
    bound = bound or TrainBound.of(preset, budget_seconds)
    limits = _limits(preset.train_limits)  # killed at the bound: a timeout is over budget
    limits = replace(limits, wall_seconds=min(limits.wall_seconds, bound.wall_seconds))
    env = {SEED_ENV: str(int(seed))}
    if fixed_steps > 0:
        env[FIXED_STEPS_ENV] = str(int(fixed_steps))
    train = _held(executor, JobSpec(
        files={"train.py": train_py.encode()}, command=("python", "train.py"),
        limits=limits, runtime=runtime, gpu_ids=gpu_ids, env=env,
        data_mounts=(DataMount(source=train_data, target=TRAIN_TARGET),),
        labels={"io.bilevel.phase": "train"}), cancel)
    why = bound.violation(train) if train.status is not Status.KILLED else ""
    if why:
        metrics = combine(train.metrics, None)
        metrics["train_bound"] = bound.record(train)
        return RunOutcome(False, metrics, why, train, None, status=OVER_BUDGET)
    model = train.files.get(MODEL_FILE)
    if train.status is not Status.OK or model is None:
        why = _describe(train, "training") if train.status is not Status.OK else (
            f"training finished but returned no {MODEL_FILE} (did train.py call "
            "harness.save_model?)")
        return RunOutcome(False, combine(train.metrics, None), why, train, None)
    wall = eval_seconds(len(model)) if eval_seconds is not None else None
    evaluation = _held(executor, eval_job_spec(model, preset, val_data, runtime, gpu_ids,
                                               wall), cancel)
    metrics = combine(train.metrics, evaluation.metrics)
    metrics["total_seconds"] = train.timings.run_s  # measured by the sandbox, not the job
    metrics["train_bound"] = bound.record(train)
    metrics["eval_bound_s"] = wall if wall is not None else preset.eval_limits.wall_seconds
    metrics["archive_bytes"] = len(model)
    if evaluation.status is not Status.OK or not isinstance(metrics.get("val_bpb"), float):
        return RunOutcome(False, metrics, _describe(evaluation, "evaluation"), train, evaluation)
    return RunOutcome(True, metrics, "", train, evaluation)
