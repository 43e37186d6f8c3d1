"""Level 1, the inner loop: baseline, then propose -> validate -> sandbox -> keep/discard.

State lives in the store, not in this object: a loop built on a run that a killed
controller left behind continues from its last finished trial with the same incumbent.
A trial that never finished is re-run under the same index (its proposal is a function
of the seed, the index and the incumbent, so it is the same proposal); a finished trial
is never run or counted twice. Proposals always start from the incumbent best.

Later levels hook in at `_propose` (mechanism filters and suggestions) and after
`_finish` (observers); the loop itself stays this small.
"""

from __future__ import annotations

import difflib
import threading
import time
from typing import Any

import structlog

from controller.research.proposer import Proposal, Proposer, ProposerContext
from controller.research.results import results_tsv
from controller.research.settings import RunSettings
from controller.research.space import ProposalError, SearchSpace
from controller.research.task import Task, TrialOutcome
from controller.store.artifacts import ArtifactStore
from controller.store.records import EventKind, RunRecord, RunState, TrialFinish, TrialStatus
from controller.store.runs import RunStore

log = structlog.get_logger(__name__)


class StopSignal:
    """Set by CancelRun ("cancelled") or a controller shutdown ("shutdown"). A shutdown
    leaves the run resumable; a cancel finishes it."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: str | None = None

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.event.set()


class InnerLoop:
    def __init__(self, run_id: str, settings: RunSettings, task: Task, proposer: Proposer,
                 store: RunStore, artifacts: ArtifactStore, stop: StopSignal) -> None:
        self.run_id = run_id
        self.settings = settings
        self.task = task
        self.proposer = proposer
        self.store = store
        self.artifacts = artifacts
        self.stop = stop
        self.space: SearchSpace = task.search_space().without(settings.search.frozen_knobs)
        self._segment_start = time.monotonic()
        self._elapsed_before = 0.0

    def run(self) -> None:
        with structlog.contextvars.bound_contextvars(run_id=self.run_id):
            run = self.store.get_run(self.run_id)
            self._elapsed_before = run.elapsed_seconds
            trials = self.store.trials(self.run_id)
            next_index = sum(1 for t in trials if t.finished)
            self.store.append_event(self.run_id, EventKind.RUN_STARTED,
                                    {"resumed": bool(trials), "next_trial": next_index})
            log.info("run started", resumed=bool(trials), next_trial=next_index,
                     proposer=self.proposer.label)
            self._write_results()
            if next_index == 0:
                source = self.task.baseline_source()
                outcome = self._trial(0, source, source, {}, "baseline", None)
                if outcome is None:
                    return self._stopped()
                if outcome.crashed:
                    return self._finish(RunState.FAILED, "the baseline crashed: " + (
                        _crash_text(outcome)))
                next_index = 1
            while True:
                run = self.store.get_run(self.run_id)
                reason = self._budget_spent(run)
                if reason:
                    return self._finish(RunState.SUCCEEDED, reason)
                if self.stop.event.is_set():
                    return self._stopped()
                if self._step(run, next_index) is None:
                    return self._stopped()
                next_index += 1

    def _step(self, run: RunRecord, index: int) -> TrialOutcome | None:
        assert run.best_trial is not None
        incumbent = self.artifacts.read_trial(self.run_id, run.best_trial, "train.py").decode()
        proposal = self._propose(index, incumbent)
        try:
            self.space.check(proposal.changes)
            candidate = self.task.apply(incumbent, proposal.changes)
            compile(candidate, "train.py", "exec", dont_inherit=True)
        except (ProposalError, SyntaxError, ValueError) as exc:
            invalid = TrialOutcome(job_status="invalid", val_bpb=None, exception={
                "type": type(exc).__name__, "message": str(exc), "frames": []},
                detail="the proposal failed validation; nothing ran")
            return self._trial(index, incumbent, incumbent, proposal.changes,
                               proposal.description, run.best_val_bpb, invalid)
        return self._trial(index, incumbent, candidate, proposal.changes,
                           proposal.description, run.best_val_bpb,
                           tokens=proposal.tokens_used)

    def _propose(self, index: int, incumbent: str) -> Proposal:
        ctx = ProposerContext(trial_index=index, incumbent=self.task.read_knobs(incumbent),
                              space=self.space, history=self.store.trials(self.run_id))
        return self.proposer.propose(ctx)

    def _trial(self, index: int, incumbent: str, source: str, changes: dict[str, Any],
               description: str, best: float | None, precomputed: TrialOutcome | None = None,
               tokens: int = 0) -> TrialOutcome | None:
        """Run one trial; None when a stop interrupted it (it stays unfinished)."""
        with structlog.contextvars.bound_contextvars(trial=index):
            diff = "".join(difflib.unified_diff(
                incumbent.splitlines(keepends=True), source.splitlines(keepends=True),
                "a/train.py", "b/train.py"))
            self.artifacts.write_trial(self.run_id, index, "train.py", source.encode())
            self.artifacts.write_trial(self.run_id, index, "diff", diff.encode())
            attempt = self.store.begin_trial(self.run_id, index, description, changes)
            log.info("trial started", attempt=attempt, description=description)
            outcome = precomputed or self.task.evaluate(source, self.settings.search.seed,
                                                        self.stop.event)
            if self.stop.event.is_set() and precomputed is None:
                log.info("trial interrupted", reason=self.stop.reason)
                return None
            self.artifacts.write_trial(self.run_id, index, "log", outcome.log.encode())
            status = self._judge(index, outcome, best)
            self.store.finish_trial(self.run_id, TrialFinish(
                index=index, status=status, val_bpb=outcome.val_bpb,
                memory_gb=outcome.memory_gb, metrics=outcome.metrics,
                job_status=outcome.job_status, exception=outcome.exception,
                seconds=outcome.seconds, new_best=status is TrialStatus.KEEP,
                tokens_used=tokens), self._elapsed())
            log.info("trial finished", status=status.value, val_bpb=outcome.val_bpb,
                     job_status=outcome.job_status)
            self._write_results()
            return outcome

    def _judge(self, index: int, outcome: TrialOutcome, best: float | None) -> TrialStatus:
        if outcome.crashed or outcome.val_bpb is None:
            return TrialStatus.CRASH
        if index == 0 or best is None:
            return TrialStatus.KEEP
        margin = self.settings.search.min_improvement
        return TrialStatus.KEEP if outcome.val_bpb < best - margin else TrialStatus.DISCARD

    def _budget_spent(self, run: RunRecord) -> str:
        b = self.settings.budgets
        if run.trials_done - 1 >= b.max_trials:
            return f"trial budget of {b.max_trials} spent"
        if b.max_wall_seconds and self._elapsed() >= b.max_wall_seconds:
            return f"wall-time budget of {b.max_wall_seconds:g} s spent"
        if b.max_llm_tokens and run.llm_tokens_used >= b.max_llm_tokens:
            return f"LLM token budget of {b.max_llm_tokens} spent"
        return ""

    def _elapsed(self) -> float:
        return self._elapsed_before + time.monotonic() - self._segment_start

    def _write_results(self) -> None:
        self.artifacts.write_results(self.run_id, results_tsv(self.store.trials(self.run_id)))

    def _stopped(self) -> None:
        if self.stop.reason == "cancelled":
            self._finish(RunState.CANCELLED, "cancelled by request")
        else:
            log.info("run paused for shutdown; it resumes when the controller restarts")

    def _finish(self, state: RunState, reason: str) -> None:
        run = self.store.get_run(self.run_id)
        summary = summarize(run, reason)
        improved = (run.best_val_bpb is not None and run.baseline_val_bpb is not None
                    and run.best_val_bpb < run.baseline_val_bpb)
        self.store.finish_run(self.run_id, state, reason, summary, {
            "state": state.value, "reason": reason, "baseline_val_bpb": run.baseline_val_bpb,
            "best_val_bpb": run.best_val_bpb, "improved": improved, "summary": summary})
        log.info("run finished", state=state.value, summary=summary)


def summarize(run: RunRecord, reason: str) -> str:
    """One honest line: did the search beat its baseline, and by how much."""
    base, best, n = run.baseline_val_bpb, run.best_val_bpb, max(run.trials_done - 1, 0)
    if base is None or best is None:
        return f"{reason}; no baseline result"
    if best < base:
        return (f"{reason}; best val_bpb {best:.6f} (trial {run.best_trial}) beats the "
                f"baseline {base:.6f} by {base - best:.6f} after {n} trials")
    return f"{reason}; no improvement over the baseline val_bpb {base:.6f} in {n} trials"


def _crash_text(outcome: TrialOutcome) -> str:
    if outcome.exception:
        return f"{outcome.exception.get('type')}: {outcome.exception.get('message')}"
    return outcome.detail or f"job status {outcome.job_status}"
