"""Run a candidate train.py end to end: train in one sandbox, evaluate in another.

Phase 1 runs the candidate with only the train split mounted (read-only) and returns
the archived model from /job/out. Its time budget is enforced here, outside the
candidate's process (TrainBound): the executor measures the phase's wall time and the
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
stated them, after type checks.

`run_direct` does the same with host subprocesses, for benchmarks on machines without
Docker (a GPU box) and for fast tests. It isolates nothing: never use it for LLM code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.data import PreparedData, prepare
from trainer.presets import PhaseLimits, Preset
from trainer.shards import DATA_DIR_ENV
from trainer.summary import (
    FIXED_STEPS_ENV,
    METRICS_ENV,
    MODEL_FILE,
    OUT_DIR_ENV,
    SEED_ENV,
    format_summary,
)

if TYPE_CHECKING:
    from controller.sandbox.executor import SandboxExecutor
    from controller.sandbox.spec import JobResult, JobSpec, Limits

TRAIN_TARGET = "/data/train"
VAL_TARGET = "/data/val"
EVAL_COMMAND = ("python", "-P", "-m", "trainer.evaluate", "--model", MODEL_FILE,
                "--data", VAL_TARGET)
# Keys copied from the training job's self-reported metrics, with their types.
TRAIN_KEYS: dict[str, tuple[type, ...]] = {
    "training_seconds": (int, float), "total_seconds": (int, float),
    "peak_vram_mb": (int, float), "peak_rss_mb": (int, float),
    "mfu_percent": (int, float, type(None)), "total_tokens": (int,),
    "total_tokens_M": (int, float), "tokens_per_second": (int, float, type(None)),
    "num_steps": (int,), "num_params": (int,), "num_params_M": (int, float),
    "depth": (int,), "final_train_loss": (int, float, type(None)), "device": (str,),
}
EVAL_KEYS = ("val_bpb", "nats", "target_bytes", "target_tokens", "eval_seconds",
             "probe_max_diff", "probe_mean_gain", "eval_num_params", "eval_device")


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
        from controller.sandbox.spec import Status

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


@dataclass
class RunOutcome:
    """Combined metrics (val_bpb from the trusted phase only) and both job results.
    `status` is OVER_BUDGET when phase 1 broke its TrainBound (no evaluation ran)."""

    ok: bool
    metrics: dict[str, Any]
    error: str = ""
    train: Any = None  # JobResult (or a direct-run record)
    eval: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    status: str = ""

    def summary(self) -> str:
        return format_summary(self.metrics)


def combine(train_metrics: Any, eval_metrics: Any) -> dict[str, Any]:
    """Trusted val_bpb plus the type-checked training figures; nothing else passes."""
    out: dict[str, Any] = {}
    if isinstance(train_metrics, dict):
        for key, types in TRAIN_KEYS.items():
            value = train_metrics.get(key)
            if isinstance(value, types) and not isinstance(value, bool):
                out[key] = value
    if isinstance(eval_metrics, dict):
        for key in EVAL_KEYS:
            if key in eval_metrics:
                out[key] = eval_metrics[key]
    out.setdefault("val_bpb", None)
    return out


def _limits(phase: PhaseLimits) -> Limits:
    from controller.sandbox.spec import Limits

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


def data_volumes(executor: SandboxExecutor, data: PreparedData) -> tuple[str, str]:
    """Docker volumes holding the train and val splits (one per namespace and data hash)."""
    from controller.sandbox.volumes import data_volume

    names = []
    for split, path in (("train", data.train_dir), ("val", data.val_dir)):
        names.append(data_volume(executor, f"data-{data.digest}-{split}", path))
    return names[0], names[1]


def eval_job_spec(model: bytes, preset: Preset, val_volume: str, runtime: str = "runc",
                  gpu_ids: tuple[str, ...] = (), wall_seconds: float | None = None) -> JobSpec:
    """Phase 2: the trusted evaluator on the archive, through the same hardened
    executor as any job (same runtime, its own preset limits, no network, nothing but
    the archive in /job and the validation split mounted read-only). It reads
    candidate bytes next to that split, so it gets no privilege a job lacks.
    `wall_seconds` replaces the preset's fixed wall limit (see trainer/calibration.py)."""
    from controller.sandbox.spec import DataMount, JobSpec

    limits = _limits(preset.eval_limits)
    if wall_seconds is not None:
        limits = replace(limits, wall_seconds=wall_seconds)
    return JobSpec(files={MODEL_FILE: model}, command=EVAL_COMMAND,
                   limits=limits, runtime=runtime, gpu_ids=gpu_ids,
                   data_mounts=(DataMount(volume=val_volume, target=VAL_TARGET),),
                   labels={"io.bilevel.phase": "eval"})


def _held(executor: SandboxExecutor, spec: JobSpec,
          cancel: threading.Event | None) -> JobResult:
    """Run `spec` while holding its cpus of the host's cores (none to hold on a cluster
    backend); a cancel while waiting for them is a job killed before it started."""
    from controller.sandbox.spec import JobResult, Status

    gate = executor.cores
    if gate is None:
        return executor.run(spec, cancel=cancel)
    with gate.hold(spec.limits.cpus, cancel) as held:
        if held:
            return executor.run(spec, cancel=cancel)
    return JobResult(status=Status.KILLED, exit_code=None,
                     detail="cancelled while waiting for free cores; the job never started")


def run_in_sandbox(executor: SandboxExecutor, train_py: str, preset: Preset,
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
    from controller.sandbox.spec import DataMount, JobSpec, Status

    data = data or prepare(preset.data)
    train_volume, val_volume = data_volumes(executor, data)
    bound = bound or TrainBound.of(preset, budget_seconds)
    limits = _limits(preset.train_limits)  # killed at the bound: a timeout is over budget
    limits = replace(limits, wall_seconds=min(limits.wall_seconds, bound.wall_seconds))
    env = {SEED_ENV: str(int(seed))}
    if fixed_steps > 0:
        env[FIXED_STEPS_ENV] = str(int(fixed_steps))
    train = _held(executor, JobSpec(
        files={"train.py": train_py.encode()}, command=("python", "train.py"),
        limits=limits, runtime=runtime, gpu_ids=gpu_ids, env=env,
        data_mounts=(DataMount(volume=train_volume, target=TRAIN_TARGET),),
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
    evaluation = _held(executor, eval_job_spec(model, preset, val_volume, runtime, gpu_ids,
                                               wall), cancel)
    metrics = combine(train.metrics, evaluation.metrics)
    metrics["total_seconds"] = train.timings.run_s  # measured by the sandbox, not the job
    metrics["train_bound"] = bound.record(train)
    metrics["eval_bound_s"] = wall if wall is not None else preset.eval_limits.wall_seconds
    metrics["archive_bytes"] = len(model)
    if evaluation.status is not Status.OK or not isinstance(metrics.get("val_bpb"), float):
        return RunOutcome(False, metrics, _describe(evaluation, "evaluation"), train, evaluation)
    return RunOutcome(True, metrics, "", train, evaluation)


@dataclass
class DirectPhase:
    """What a host subprocess phase produced (the direct-mode stand-in for JobResult)."""

    returncode: int
    stdout: str
    stderr: str
    metrics: dict[str, Any]
    seconds: float


def _run_phase(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> DirectPhase:
    metrics_file = cwd / ".metrics.json"
    metrics_file.unlink(missing_ok=True)
    started = time.monotonic()
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**env, METRICS_ENV: str(metrics_file)}, check=False)
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    return DirectPhase(proc.returncode, proc.stdout, proc.stderr, metrics,
                       time.monotonic() - started)


def run_direct(train_py: str, preset: Preset, data: PreparedData | None = None,
               workdir: Path | None = None, seed: int = 42) -> RunOutcome:
    """Both phases as host subprocesses (no isolation: trusted code and benchmarks only).

    The training process sees a data folder holding only the train split, like the
    sandbox; the evaluator gets only the archive and the val split.
    """
    data = data or prepare(preset.data)
    root = Path(workdir or tempfile.mkdtemp(prefix="bilevel-run-"))
    train_dir, eval_dir, train_data = root / "train", root / "eval", root / "data"
    for folder in (train_dir, eval_dir, train_data):
        folder.mkdir(parents=True, exist_ok=True)
    if not (train_data / "train").exists():
        (train_data / "train").symlink_to(data.train_dir.resolve())
    (train_dir / "train.py").write_text(train_py, encoding="utf-8")
    package_root = str(Path(__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BILEVEL_") and k != FIXED_STEPS_ENV}
    env.update(PYTHONPATH=package_root, PYTHONUNBUFFERED="1", **{SEED_ENV: str(int(seed))})
    train = _run_phase([sys.executable, "train.py"], train_dir,
                       {**env, DATA_DIR_ENV: str(train_data), OUT_DIR_ENV: str(train_dir / "out")},
                       preset.train_limits.wall_seconds)
    model = train_dir / "out" / MODEL_FILE
    if train.returncode != 0 or not model.exists():
        tail = train.stderr.strip().splitlines()[-1:] or ["no model archive written"]
        return RunOutcome(False, combine(train.metrics, None),
                          f"training failed: {tail[0]}", train, None)
    (eval_dir / MODEL_FILE).write_bytes(model.read_bytes())
    evaluation = _run_phase([sys.executable, "-P", "-m", "trainer.evaluate", "--model",
                             MODEL_FILE, "--data", str(data.val_dir)], eval_dir, env,
                            preset.eval_limits.wall_seconds)
    metrics = combine(train.metrics, evaluation.metrics)
    if evaluation.returncode != 0:
        tail = evaluation.stderr.strip().splitlines()[-1:] or ["evaluation failed"]
        return RunOutcome(False, metrics, f"evaluation failed: {tail[0]}", train, evaluation)
    return RunOutcome(True, metrics, "", train, evaluation)
