"""Evaluate one candidate on one or more seeds and fold the runs into one outcome.

The baseline runs its seeds one at a time, like every trial of a batch-1 run: a
time-budgeted trainer measures its host as much as its code, so seeds sharing a CPU
host's cores would each get fewer steps, by an amount that depends on the slot schedule,
and the noise sigma of the keep rule would measure the schedule too. Only a task that
says its value is independent of timing (`seeds_in_parallel = True`, e.g. the
surrogate, a function of the knobs and the seed) runs them at once. A candidate runs
once, and again on the next seed only when the keep rule asks for a confirmation. A
confirmation whose val_bpb is bit-identical to the first run's, on another seed, means
the candidate ignores the trial seed (a hard-coded seed is a way to pick a lucky one):
the trial gets job status `seed_ignored`, a crash that is never kept.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog

from controller.research.task import Task, TrialOutcome
from controller.sandbox.executor import SandboxUnavailable
from controller.sandbox.spec import Status

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Evaluation:
    outcome: TrialOutcome  # the folded outcome: mean val_bpb, or the first crash
    values: tuple[float, ...]  # val_bpb of each run, in seed order
    started_at: float
    ended_at: float


def invalid(reason: str) -> Evaluation:
    """A proposal that failed validation: recorded as a crash, nothing ran."""
    now = time.time()
    outcome = TrialOutcome(job_status="invalid", val_bpb=None, exception={
        "type": "ProposalError", "message": reason, "frames": []},
        detail="the proposal failed validation; nothing ran")
    return Evaluation(outcome, (), now, now)


SEED_IGNORED = "seed_ignored"


def seed_ignored(runs: Sequence[tuple[int, TrialOutcome]]) -> TrialOutcome | None:
    """The flagged outcome when runs on different seeds gave bit-identical val_bpb."""
    seeds = {s for s, _ in runs}
    values = {o.val_bpb for _, o in runs}
    if len(runs) < 2 or len(seeds) < len(runs) or len(values) != 1 or None in values:
        return None
    first = runs[0][1]
    text = (f"the runs on seeds {sorted(seeds)} gave the bit-identical val_bpb "
            f"{first.val_bpb!r}: train.py ignores the trial seed (harness.seed), so the "
            "result cannot be confirmed; it is not kept")
    metrics = {**first.metrics, "seed_ignored_val_bpb": first.val_bpb,
               "evaluations": [{"seed": s, "val_bpb": o.val_bpb} for s, o in runs]}
    return TrialOutcome(job_status=SEED_IGNORED, val_bpb=None, memory_gb=first.memory_gb,
                        metrics=metrics, log="".join(f"=== seed {s} ===\n{o.log}"
                                                     for s, o in runs),
                        seconds=sum(o.seconds for _, o in runs), detail=text)


def fold(runs: Sequence[tuple[int, TrialOutcome]]) -> TrialOutcome:
    crashed = next((o for _, o in runs if o.crashed), None)
    if crashed is not None or len(runs) == 1:
        return crashed or runs[0][1]
    values = [o.val_bpb for _, o in runs if o.val_bpb is not None]
    first = runs[0][1]
    metrics = dict(first.metrics)
    metrics["evaluations"] = [{"seed": s, "val_bpb": o.val_bpb} for s, o in runs]
    log = "".join(f"=== seed {s} ===\n{o.log}" for s, o in runs)
    return TrialOutcome(job_status=first.job_status, val_bpb=statistics.fmean(values),
                        memory_gb=max(o.memory_gb for _, o in runs), metrics=metrics,
                        log=log, seconds=sum(o.seconds for _, o in runs), detail=first.detail,
                        node=",".join(dict.fromkeys(o.node for _, o in runs if o.node)))


def guarded(task: Task, source: str, seed: int, cancel: threading.Event) -> TrialOutcome:
    """`task.evaluate`, with any failure to turn the job's output into an outcome (a bug
    reached by hostile output) charged to this trial as `sandbox_error`, not to the run.
    An engine that is down (SandboxUnavailable) still stops the run."""
    try:
        return task.evaluate(source, seed, cancel)
    except SandboxUnavailable:
        raise
    except Exception as exc:
        log.exception("trial evaluation failed", seed=seed)
        return TrialOutcome(
            job_status=Status.SANDBOX_ERROR.value, val_bpb=None,
            detail=f"the controller could not process this trial's result: "
                   f"{type(exc).__name__}: {str(exc)[:1000]}")


def evaluate(task: Task, source: str, seeds: Sequence[int], cancel: threading.Event,
             confirm: Callable[[float], bool] | None = None) -> Evaluation | None:
    """Run `source` on `seeds` (one after another; at once for a task whose value does
    not depend on timing), or on seeds[0] and then seeds[1] if `confirm(first val_bpb)`
    says so. None when `cancel` interrupted it."""
    start = time.time()
    runs: list[tuple[int, TrialOutcome]] = []
    if confirm is None and len(seeds) > 1 and not getattr(task, "seeds_in_parallel", False):
        for seed in seeds:
            if cancel.is_set():
                break
            runs.append((seed, guarded(task, source, seed, cancel)))
    elif confirm is None and len(seeds) > 1:
        with ThreadPoolExecutor(len(seeds), thread_name_prefix="seed") as pool:
            outcomes = list(pool.map(lambda s: guarded(task, source, s, cancel), seeds))
        runs = list(zip(seeds, outcomes, strict=True))
    else:
        runs.append((seeds[0], guarded(task, source, seeds[0], cancel)))
        first = runs[0][1]
        if (confirm is not None and len(seeds) > 1 and not first.crashed
                and first.val_bpb is not None and not cancel.is_set()
                and confirm(first.val_bpb)):
            runs.append((seeds[1], guarded(task, source, seeds[1], cancel)))
    if cancel.is_set():
        return None
    flagged = seed_ignored(runs) if confirm is not None else None
    outcome = flagged or fold(runs)
    values = tuple(o.val_bpb for _, o in runs if o.val_bpb is not None)
    return Evaluation(outcome, values if not outcome.crashed else (), start, time.time())
