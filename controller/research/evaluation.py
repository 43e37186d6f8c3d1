"""Evaluate one candidate on one or more seeds and fold the runs into one outcome.

The baseline runs its seeds in parallel (they are independent); a candidate runs once,
and again on the next seed only when the keep rule asks for a confirmation.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from controller.research.task import Task, TrialOutcome


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
                        log=log, seconds=sum(o.seconds for _, o in runs), detail=first.detail)


def evaluate(task: Task, source: str, seeds: Sequence[int], cancel: threading.Event,
             confirm: Callable[[float], bool] | None = None) -> Evaluation | None:
    """Run `source` on `seeds` (all at once), or on seeds[0] and then seeds[1] if
    `confirm(first val_bpb)` says so. None when `cancel` interrupted it."""
    start = time.time()
    runs: list[tuple[int, TrialOutcome]] = []
    if confirm is None and len(seeds) > 1:
        with ThreadPoolExecutor(len(seeds), thread_name_prefix="seed") as pool:
            outcomes = list(pool.map(lambda s: task.evaluate(source, s, cancel), seeds))
        runs = list(zip(seeds, outcomes, strict=True))
    else:
        runs.append((seeds[0], task.evaluate(source, seeds[0], cancel)))
        first = runs[0][1]
        if (confirm is not None and len(seeds) > 1 and not first.crashed
                and first.val_bpb is not None and not cancel.is_set()
                and confirm(first.val_bpb)):
            runs.append((seeds[1], task.evaluate(source, seeds[1], cancel)))
    if cancel.is_set():
        return None
    outcome = fold(runs)
    values = tuple(o.val_bpb for _, o in runs if o.val_bpb is not None)
    return Evaluation(outcome, values if not outcome.crashed else (), start, time.time())
