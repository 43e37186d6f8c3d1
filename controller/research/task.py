"""What the loop optimises: a Task gives a baseline train.py, its knobs, and evaluates a
candidate in the sandbox. The loop knows nothing else about training."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from controller.research.level1.protect import Protected
from controller.research.level1.space import KnobValue, SearchSpace
from controller.sandbox.spec import JobResult, Status


@dataclass(frozen=True)
class TrialOutcome:
    """The result of evaluating one candidate. `val_bpb` None means it crashed."""

    job_status: str
    val_bpb: float | None
    memory_gb: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    exception: dict[str, Any] | None = None
    log: str = ""
    seconds: float = 0.0
    detail: str = ""

    @property
    def crashed(self) -> bool:
        return self.job_status != Status.OK.value or self.val_bpb is None


class Task(Protocol):
    name: str
    description: str  # what the proposer is told the task is
    protected: Protected  # what a code edit must leave alone

    def baseline_source(self) -> str: ...

    def search_space(self) -> SearchSpace: ...

    def read_knobs(self, source: str) -> dict[str, Any]: ...

    def apply(self, source: str, changes: dict[str, KnobValue]) -> str:
        """The source with the knobs changed; raises ProposalError."""
        ...

    def evaluate(self, source: str, seed: int, cancel: threading.Event) -> TrialOutcome:
        """Run the candidate in the sandbox. Must return promptly once `cancel` is set."""
        ...


def outcome_from_job(result: JobResult, metrics: dict[str, Any] | None = None) -> TrialOutcome:
    """Map a sandbox result to a trial outcome; a missing or non-finite val_bpb is a crash."""
    metrics = dict(result.metrics if metrics is None else metrics)
    raw = metrics.get("val_bpb")
    val_bpb = float(raw) if isinstance(raw, int | float) and raw == raw and abs(raw) < 1e9 \
        else None
    memory = metrics.get("memory_gb", 0.0)
    exc = result.exception
    exception = None if exc is None else {
        "type": exc.type, "message": exc.message,
        "frames": [vars(f) for f in exc.frames]}
    detail = result.detail
    if result.status is Status.OK and val_bpb is None:
        detail = (detail + "; " if detail else "") + "the job wrote no finite val_bpb metric"
    log = f"{result.stdout}\n--- stderr ---\n{result.stderr}\n"
    return TrialOutcome(
        job_status=result.status.value, val_bpb=val_bpb,
        memory_gb=float(memory) if isinstance(memory, int | float) else 0.0,
        metrics=metrics, exception=exception, log=log,
        seconds=result.timings.run_s, detail=detail)
