"""What the loop optimises: a Task gives a baseline train.py, its knobs, and evaluates a
candidate in the sandbox. The loop knows nothing else about training."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from controller.research.level1.protect import Protected
from controller.research.level1.space import SearchSpace
from controller.sandbox.spec import JobResult, Status
from trainer.knobs import KnobValue

FORGEABLE = "metric self-reported by the candidate (forgeable)"


@dataclass(frozen=True)
class Objective:
    """What a task optimises. The loop always minimises a loss (TrialOutcome.val_bpb and
    every stored val_bpb): the metric itself, or its negation for a "maximize" task, so
    keep rules, optimizers and mechanisms need no direction. Text shown to people and
    LLMs converts back with `shown` and names the metric."""

    metric: str = "val_bpb"
    direction: str = "minimize"
    self_reported: bool = False  # no trusted scorer: the candidate's own number

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    def loss(self, value: float) -> float:
        return -value if self.maximize else value

    def shown(self, loss: float) -> float:
        """The metric's value of a loss (the loss of a value, too: negation is its own
        inverse)."""
        return -loss if self.maximize else loss

    @property
    def better(self) -> str:
        return "higher" if self.maximize else "lower"

    def describe(self) -> str:
        """e.g. "val_error (lower is better)", with the forgeable warning if it applies."""
        text = f"{self.metric} ({self.better} is better)"
        return f"{text}; {FORGEABLE}" if self.self_reported else text


GPT = Objective()


def objective_of(task: object) -> Objective:
    """The task's objective; tasks that declare none optimise val_bpb (the GPT's)."""
    found = getattr(task, "objective", None)
    return found if isinstance(found, Objective) else GPT


def memory_key(task: object) -> str:
    """What a task's lessons are stored under: a task directory's name and the hash of
    its manifest and editable file (ManifestTask.memory_key); a built-in's name."""
    key = getattr(task, "memory_key", None)
    return key if isinstance(key, str) and key else str(getattr(task, "name", ""))


def loss_note(objective: Objective) -> str:
    """For the outer levels' prompts: what the `val_bpb` of the mechanism interface and
    the trace is for this task (the loss the loop minimises)."""
    if objective == GPT:
        return "val_bpb is the task's metric (lower is better)."
    what = f"-{objective.metric} (the negated {objective.metric}, which the task " \
        "maximises)" if objective.maximize else objective.metric
    text = (f"The task's metric is {objective.describe()}. Values named val_bpb in the "
            f"interface and the trace are the loss the search minimises: {what}.")
    return text


@dataclass(frozen=True)
class TrialOutcome:
    """The result of evaluating one candidate. `val_bpb` None means it crashed; else it
    is the loss the loop minimises (Objective.loss of the task's metric)."""

    job_status: str
    val_bpb: float | None
    memory_gb: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    exception: dict[str, Any] | None = None
    log: str = ""
    seconds: float = 0.0
    detail: str = ""
    node: str = ""  # the Ray node(s) its jobs ran on, comma-joined; "" on the local engine

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


METRIC_KEYS_SHOWN = 12  # of the keys a job wrote, in the message of a missing metric


def missing_metric(metrics: dict[str, Any], metric: str) -> str:
    """Why `metric` gave no value, naming what the job wrote instead (bounded: the keys
    are the job's), so a misspelt metric name is seen at once."""
    if metric in metrics:
        return (f"the job wrote no finite {metric} metric: {metric} = "
                f"{str(metrics[metric])[:40]!r}")
    keys = sorted(metrics)
    if not keys:
        return f"the job wrote no finite {metric} metric: it wrote no metrics at all"
    shown = ", ".join(repr(k[:40]) for k in keys[:METRIC_KEYS_SHOWN])
    more = f" and {len(keys) - METRIC_KEYS_SHOWN} more" if len(keys) > METRIC_KEYS_SHOWN \
        else ""
    return f"the job wrote no finite {metric} metric; the metrics it wrote: {shown}{more}"


def outcome_from_job(result: JobResult, metrics: dict[str, Any] | None = None,
                     objective: Objective = GPT) -> TrialOutcome:
    """Map a sandbox result to a trial outcome; a missing or non-finite metric is a crash."""
    metrics = dict(result.metrics if metrics is None else metrics)
    raw = metrics.get(objective.metric)
    val_bpb = objective.loss(float(raw)) if isinstance(raw, int | float) and \
        not isinstance(raw, bool) and raw == raw and abs(raw) < 1e9 else None
    memory = metrics.get("memory_gb", 0.0)
    exc = result.exception
    exception = None if exc is None else {
        "type": exc.type, "message": exc.message,
        "frames": [vars(f) for f in exc.frames]}
    detail = result.detail
    if result.status is Status.OK and val_bpb is None:
        detail = (detail + "; " if detail else "") + missing_metric(metrics, objective.metric)
    log = f"{result.stdout}\n--- stderr ---\n{result.stderr}\n"
    return TrialOutcome(
        job_status=result.status.value, val_bpb=val_bpb,
        memory_gb=float(memory) if isinstance(memory, int | float) else 0.0,
        metrics=metrics, exception=exception, log=log,
        seconds=result.timings.run_s, detail=detail, node=result.node)
