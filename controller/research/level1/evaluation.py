"""Evaluate one candidate on one or more seeds and fold the runs into one outcome.

The baseline runs its seeds one at a time, like every trial of a batch-1 run: a
time-budgeted trainer measures its host as much as its code, so seeds sharing a CPU
host's cores would each get fewer steps, by an amount that depends on the slot schedule,
and the noise sigma of the keep rule would measure the schedule too. Only a task that
says its value is independent of timing (`seeds_in_parallel = True`, e.g. the
surrogate, a function of the knobs and the seed) runs them at once. A candidate runs
once, and again on the next seed only when the keep rule asks for a confirmation.

The seed rule: a candidate that ignores the trial seed (a hard-coded seed is a way to
pick a lucky one) gets job status `seed_ignored`, a crash that is never kept. For a task
whose value is a function of code and seed, a confirmation bit-identical to the first
run, on another seed, says so. A time-budgeted task is never bit-identical (its step
count follows the host's speed), so it offers `seed_check_runs`: the candidate at a fixed
step count on two seeds, run only for a candidate the keep rule would keep (`keeps`), at
the cost of two short runs. Bit-identical val_bpb there is `seed_ignored`; a check run
that crashes leaves the candidate unchecked, and it is not kept either.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import structlog

from controller.research.task import Task, TrialOutcome
from controller.sandbox.backend import OutputCallback
from controller.sandbox.backend_config import SandboxUnavailable
from controller.sandbox.spec import Status

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Evaluation:
    outcome: TrialOutcome  # the folded outcome: mean val_bpb, or the first crash
    values: tuple[float, ...]  # val_bpb of each run, in seed order
    started_at: float
    ended_at: float
    # Whether the fixed-step seed check ran: None where the task has none or nobody
    # asked, False where it was due but the keep rule did not want the candidate then.
    seed_checked: bool | None = None


@runtime_checkable
class SeedChecking(Protocol):
    """A task whose runs depend on timing checks the seed with runs that do not."""

    def seed_check_runs(self, source: str, seeds: Sequence[int],
                        cancel: threading.Event) -> list[tuple[int, TrialOutcome]]: ...


def invalid(reason: str) -> Evaluation:
    """A proposal that failed validation: recorded as a crash, nothing ran."""
    now = time.time()
    outcome = TrialOutcome(job_status="invalid", val_bpb=None, exception={
        "type": "ProposalError", "message": reason, "frames": []},
        detail="the proposal failed validation; nothing ran")
    return Evaluation(outcome, (), now, now)


SEED_IGNORED = "seed_ignored"
PRUNED = "pruned"  # the job status of a trial the run's pruner stopped


def pruned(reason: str, started_at: float) -> Evaluation:
    """A trial stopped by the pruner on its own reported curve: no score, never kept."""
    now = time.time()
    outcome = TrialOutcome(job_status=PRUNED, val_bpb=None, seconds=now - started_at,
                           detail=f"pruned: {reason}")
    return Evaluation(outcome, (), started_at, now)


# Fixed-step runs of one seed on a CPU agree to about 1e-7 (kernels pick other SIMD paths
# for differently aligned buffers: 4.9328803594 vs 4.9328824039 seen); two seeds at two
# steps differ by about 1e-2. Closer than this is the same run.
SAME_RUN_TOLERANCE = 1e-5


def seed_ignored(runs: Sequence[tuple[int, TrialOutcome]],
                 tolerance: float = 0.0) -> TrialOutcome | None:
    """The flagged outcome when runs on different seeds gave the same val_bpb (within
    `tolerance`: 0 asks for bit-identical values)."""
    seeds = {s for s, _ in runs}
    values = [o.val_bpb for _, o in runs]
    if len(runs) < 2 or len(seeds) < len(runs) or None in values:
        return None
    known = [v for v in values if v is not None]
    if max(known) - min(known) > tolerance:
        return None
    first = runs[0][1]
    same = "bit-identical" if tolerance == 0 else f"same (within {tolerance:g})"
    text = (f"the runs on seeds {sorted(seeds)} gave the {same} val_bpb "
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


def checked(outcome: TrialOutcome, runs: Sequence[tuple[int, TrialOutcome]]) -> TrialOutcome:
    """`outcome` with the seed check's runs on its metrics: flagged `seed_ignored` when
    they are bit-identical, the crash of a check run that crashed, else as it was."""
    record = [{"seed": s, "val_bpb": o.val_bpb, "num_steps": o.metrics.get("num_steps"),
               "seconds": o.seconds} for s, o in runs]
    metrics = {**outcome.metrics, "seed_check": record}
    crashed = next((o for _, o in runs if o.crashed), None)
    if crashed is not None or len(runs) < 2:
        why = crashed.detail if crashed is not None else "it did not finish"
        return TrialOutcome(
            job_status=crashed.job_status if crashed is not None else Status.KILLED.value,
            val_bpb=None, memory_gb=outcome.memory_gb, metrics=metrics,
            exception=crashed.exception if crashed is not None else None,
            log=outcome.log + "".join(f"=== seed check, seed {s} ===\n{o.log}" for s, o in runs),
            seconds=outcome.seconds, node=outcome.node,
            detail=f"the seed check (fixed-step runs on two seeds) failed: {why}; an "
                   "unchecked candidate is not kept")
    flagged = seed_ignored(runs, SAME_RUN_TOLERANCE)
    if flagged is not None:
        return replace(flagged, metrics={**metrics, **flagged.metrics, "seed_check": record},
                       log=outcome.log + flagged.log)
    return replace(outcome, metrics=metrics)


def guarded(task: Task, source: str, seed: int, cancel: threading.Event,
            progress: OutputCallback | None = None) -> TrialOutcome:
    """`task.evaluate`, with any failure to turn the job's output into an outcome (a bug
    reached by hostile output) charged to this trial as `sandbox_error`, not to the run.
    An engine that is down (SandboxUnavailable) still stops the run. `progress` hears
    the job's output as it runs, for a task that reports progress (`reports_progress`)."""
    try:
        if progress is not None and getattr(task, "reports_progress", False):
            return task.evaluate(source, seed, cancel, on_output=progress)  # type: ignore[call-arg]
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
             confirm: Callable[[float], bool] | None = None,
             keeps: Callable[[Sequence[float]], bool] | None = None,
             progress: OutputCallback | None = None) -> Evaluation | None:
    """Run `source` on `seeds` (one after another; at once for a task whose value does
    not depend on timing), or on seeds[0] and then seeds[1] if `confirm(first val_bpb)`
    says so. If the task has a seed check and `keeps(values)` says the keep rule would
    keep the candidate, the check runs too. None when `cancel` interrupted it. Only the
    first seed's job reports progress (the trial's curve)."""
    start = time.time()
    runs: list[tuple[int, TrialOutcome]] = []
    if confirm is None and len(seeds) > 1 and not getattr(task, "seeds_in_parallel", False):
        for i, seed in enumerate(seeds):
            if cancel.is_set():
                break
            runs.append((seed, guarded(task, source, seed, cancel,
                                       progress if i == 0 else None)))
    elif confirm is None and len(seeds) > 1:
        with ThreadPoolExecutor(len(seeds), thread_name_prefix="seed") as pool:
            outcomes = list(pool.map(lambda s: guarded(
                task, source, s, cancel, progress if s == seeds[0] else None), seeds))
        runs = list(zip(seeds, outcomes, strict=True))
    else:
        runs.append((seeds[0], guarded(task, source, seeds[0], cancel, progress)))
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
    seed_checked: bool | None = None
    if isinstance(task, SeedChecking) and keeps is not None:
        seed_checked = False
        if not outcome.crashed and keeps(values):
            check_seeds = (seeds[0], seeds[0] + 1)
            log.info("seed check: fixed-step runs on two seeds", seeds=check_seeds)
            outcome = checked(outcome, task.seed_check_runs(source, check_seeds, cancel))
            seed_checked = True
            if cancel.is_set():
                return None
    return Evaluation(outcome, values if not outcome.crashed else (), start, time.time(),
                      seed_checked)
