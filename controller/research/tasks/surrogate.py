"""The surrogate task: trainer/surrogate.py's noisy closed-form response surface.

Same loop, same knobs as the real trainer, but "training" takes milliseconds. For
tests, demos and benchmarks of the controller. Its metric is computed here, on the
trusted side, from the knob values read out of the candidate's file
(trainer.surrogate.surrogate_value); what the job reports is ignored, so a code edit
such as `random.Random.gauss = ...` cannot forge it. Code mode is
refused for this task (registry.make_task): only knob changes are experiments here.

With an executor, the file still runs as a sandbox job, and a crash there (a raising
baseline, a modelled OOM) is the trial's crash; with `executor=None` the task runs no
candidate code at all: trials are evaluated in-process from the knobs alone, which is
what fast surrogate ablations want.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from controller.research.level1.protect import SURROGATE, Protected
from controller.research.level1.space import Knob, SearchSpace
from controller.research.task import TrialOutcome, outcome_from_job
from controller.sandbox.backend import SandboxBackend
from controller.sandbox.spec import JobSpec, Limits
from trainer import knobs
from trainer.knobs import KnobValue

# trainer/surrogate.py is a standalone script (excluded from mypy and ruff), loaded as a
# module for its pure response function.
_SCRIPT = importlib.import_module("trainer.surrogate")
KNOB_NAMES: tuple[str, ...] = _SCRIPT.KNOB_NAMES
surrogate_value: Callable[[Mapping[str, Any], int, float, float], tuple[float, float]] = \
    _SCRIPT.surrogate_value

SOURCE = Path(__file__).resolve().parents[3] / "trainer" / "surrogate.py"

SPACE = SearchSpace((
    Knob("DEPTH", "int", 2, 16),
    Knob("ASPECT_RATIO", "int", 32, 128, power_of_two=True),
    Knob("WINDOW_PATTERN", "choice", choices=("SSSL", "SSLL", "SLSL", "L")),
    Knob("TOTAL_BATCH_SIZE", "int", 2**16, 2**21, power_of_two=True),
    Knob("EMBEDDING_LR", "float", 0.01, 5.0, log=True),
    Knob("UNEMBEDDING_LR", "float", 1e-4, 0.1, log=True),
    Knob("MATRIX_LR", "float", 1e-3, 0.5, log=True),
    Knob("SCALAR_LR", "float", 0.01, 5.0, log=True),
    Knob("WEIGHT_DECAY", "float", 0.0, 1.0),
    Knob("WARMUP_RATIO", "float", 0.0, 0.5),
    Knob("WARMDOWN_RATIO", "float", 0.0, 1.0),
    Knob("FINAL_LR_FRAC", "float", 0.0, 1.0),
))


class SurrogateTask:
    name = "surrogate"
    description = (
        "Lower val_bpb (validation bits per byte; lower is better) of a small GPT language "
        "model trained for a fixed time budget. train.py holds the model shape, batch and "
        "optimizer knobs as top-level constants. val_bpb varies by about 3e-4 between seeds.")
    protected: Protected = SURROGATE

    allows_code_edits = False  # the metric is a function of the knobs alone
    seeds_in_parallel = True  # ... and the seed: timing cannot move it (evaluation.py)

    def __init__(self, executor: SandboxBackend | None, baseline: str | None = None,
                 limits: Limits | None = None, runtime: str = "runc") -> None:
        self.executor = executor
        self.runtime = runtime
        self._baseline = baseline if baseline is not None else SOURCE.read_text()
        self.limits = limits or Limits(wall_seconds=60, memory_bytes=256 << 20, cpus=1.0)
        fixed = knobs.read_knobs(self._baseline)  # the experiment's constants: the baseline's
        self._noise_std = fixed.get("NOISE_STD", 3e-4)
        self._memory_limit_gb = fixed.get("MEMORY_LIMIT_GB", 80.0)

    def baseline_source(self) -> str:
        return self._baseline

    def search_space(self) -> SearchSpace:
        return SPACE

    def read_knobs(self, source: str) -> dict[str, Any]:
        return knobs.read_knobs(source)

    def apply(self, source: str, changes: dict[str, KnobValue]) -> str:
        return knobs.write_knobs(source, changes)

    def value(self, source: str, seed: int) -> tuple[float, float]:
        """Trusted (val_bpb, memory_gb) of the knob values in `source`; raises ValueError
        (a knob missing or of the wrong type), MemoryError (the modelled OOM), ..."""
        found = knobs.read_knobs(source)
        missing = [name for name in KNOB_NAMES if name not in found]
        if missing:
            raise ValueError(f"train.py has no literal top-level {', '.join(missing)}")
        for name in KNOB_NAMES:
            wanted = str if name == "WINDOW_PATTERN" else int | float
            if not isinstance(found[name], wanted) or isinstance(found[name], bool):
                raise ValueError(f"knob {name} is {found[name]!r}, not a "
                                 f"{'string' if wanted is str else 'number'}")
        val_bpb, memory_gb = surrogate_value(found, seed, self._noise_std,
                                             self._memory_limit_gb)
        return float(val_bpb), float(memory_gb)

    def evaluate(self, source: str, seed: int, cancel: threading.Event) -> TrialOutcome:
        job: TrialOutcome | None = None
        if self.executor is not None:
            spec = JobSpec(files={"train.py": source.encode()}, command=("python3", "train.py"),
                           limits=self.limits, env={"TRIAL_SEED": str(seed)},
                           runtime=self.runtime)
            job = outcome_from_job(self.executor.run_job(spec, cancel=cancel))
            if job.crashed:
                return job
        try:
            val_bpb, memory_gb = self.value(source, seed)
        except (ValueError, ArithmeticError, MemoryError, TypeError) as exc:
            return TrialOutcome(job_status="error", val_bpb=None, exception={
                "type": type(exc).__name__, "message": str(exc), "frames": []},
                log=job.log if job else "", seconds=job.seconds if job else 0.0,
                detail="the surrogate's value of these knobs raised",
                node=job.node if job else "")
        metrics = {"val_bpb": val_bpb, "memory_gb": memory_gb}  # the job's own are ignored
        return TrialOutcome(job_status="ok", val_bpb=val_bpb, memory_gb=memory_gb,
                            metrics=metrics, log=job.log if job else "",
                            seconds=job.seconds if job else 0.0, node=job.node if job else "")
