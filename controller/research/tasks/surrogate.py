"""The surrogate task: trainer/surrogate.py run as a sandbox job in milliseconds.

Same loop, same sandbox, same knobs as the real trainer, but the "training" is a noisy
closed-form response surface. For tests, demos and benchmarks of the controller.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from controller.research import knobs
from controller.research.protect import SURROGATE, Protected
from controller.research.space import Knob, KnobValue, SearchSpace
from controller.research.task import TrialOutcome, outcome_from_job
from controller.sandbox.executor import SandboxExecutor
from controller.sandbox.spec import JobSpec, Limits

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

    def __init__(self, executor: SandboxExecutor, baseline: str | None = None,
                 limits: Limits | None = None, runtime: str = "runc") -> None:
        self.executor = executor
        self.runtime = runtime
        self._baseline = baseline if baseline is not None else SOURCE.read_text()
        self.limits = limits or Limits(wall_seconds=60, memory_bytes=256 << 20, cpus=1.0)

    def baseline_source(self) -> str:
        return self._baseline

    def search_space(self) -> SearchSpace:
        return SPACE

    def read_knobs(self, source: str) -> dict[str, Any]:
        return knobs.read_knobs(source)

    def apply(self, source: str, changes: dict[str, KnobValue]) -> str:
        return knobs.write_knobs(source, changes)

    def evaluate(self, source: str, seed: int, cancel: threading.Event) -> TrialOutcome:
        spec = JobSpec(files={"train.py": source.encode()}, command=("python3", "train.py"),
                       limits=self.limits, env={"TRIAL_SEED": str(seed)},
                       runtime=self.runtime)
        return outcome_from_job(self.executor.run(spec, cancel=cancel))
