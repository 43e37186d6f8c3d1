"""Planning the next trial: which train.py a proposal starts from (the incumbent best,
or a crashed candidate that may get another fix attempt), the context the proposer
sees, and the candidate a finished proposal becomes when it is launched."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from controller.research.level1.proposer import CrashInfo, Proposal, Proposer, ProposerContext
from controller.research.level1.space import ProposalError, SearchSpace
from controller.research.level1.validate import Validator
from controller.research.settings import RunSettings
from controller.research.task import Task
from controller.store import curves
from controller.store.artifacts import ArtifactStore
from controller.store.records import TrialRecord, TrialStatus
from controller.store.runs import RunStore

ContextHook = Callable[[ProposerContext], str]
LOG_TAIL_LINES = 40


@dataclass(frozen=True)
class Planned:
    """A proposal and what it was made from."""

    index: int
    proposal: Proposal
    base_trial: int
    base_source: str
    fix_of: int | None


class Planner:
    def __init__(self, run_id: str, settings: RunSettings, task: Task, proposer: Proposer,
                 store: RunStore, artifacts: ArtifactStore, space: SearchSpace,
                 validator: Validator, lessons: Sequence[str]) -> None:
        self.run_id = run_id
        self.settings = settings
        self.task = task
        self.proposer = proposer
        self.store = store
        self.artifacts = artifacts
        self.space = space
        self.validator = validator
        self.lessons = tuple(lessons)
        self.context_hooks: list[ContextHook] = []
        self._fix_requested: set[int] = set()

    def fix_target(self) -> int | None:
        """The latest finished trial, if it crashed and may get another fix attempt.
        Called by the loop's coordinator thread only."""
        if not (self.proposer.fixes_crashes and self.settings.proposer.max_fix_attempts):
            return None
        trials = {t.index: t for t in self.store.trials(self.run_id)}
        finished = [t for t in trials.values() if t.finished]
        if not finished:
            return None
        last = max(finished, key=lambda t: t.index)
        if (last.index == 0 or last.status is not TrialStatus.CRASH
                or last.job_status == "invalid" or last.index in self._fix_requested
                or any(t.fix_of == last.index for t in trials.values())):
            return None
        depth, cur = 0, last
        while cur.fix_of is not None and cur.fix_of in trials:
            depth, cur = depth + 1, trials[cur.fix_of]
        if depth >= self.settings.proposer.max_fix_attempts:
            return None
        self._fix_requested.add(last.index)
        return last.index

    def propose(self, index: int, fix_of: int | None, in_flight: tuple[str, ...]) -> Planned:
        """Runs in a worker thread: build the context from the store, ask the proposer."""
        run = self.store.get_run(self.run_id)
        trials = self.store.trials(self.run_id)
        crash = None
        if fix_of is not None:
            base_trial = fix_of
            crashed = next(t for t in trials if t.index == fix_of)
            tail = self.artifacts.read_trial(self.run_id, fix_of, "log").decode(
                errors="replace").splitlines()[-LOG_TAIL_LINES:]
            crash = CrashInfo(fix_of, _crash_text(crashed), "\n".join(tail))
        else:
            assert run.best_trial is not None
            base_trial = run.best_trial
        base = self.artifacts.read_trial(self.run_id, base_trial, "train.py").decode()
        ctx = ProposerContext(
            trial_index=index, incumbent=self.task.read_knobs(base), space=self.space,
            history=[t for t in trials if t.finished], base_source=base,
            base_trial=base_trial, best_val_bpb=run.best_val_bpb,
            baseline_val_bpb=run.baseline_val_bpb, noise_sigma=run.noise_sigma, crash=crash,
            in_flight=in_flight, lessons=self.lessons, validator=self.validator,
            curves=curves.load(self.store, self.run_id))
        if self.context_hooks:
            ctx = replace(ctx, mechanism_context=tuple(h(ctx) for h in self.context_hooks))
        return Planned(index, self.proposer.propose(ctx), base_trial, base, fix_of)

    def candidate(self, planned: Planned, best: int, best_source: str) -> tuple[str, int, str]:
        """(candidate source, parent trial, parent source). Params-mode changes made
        against an older incumbent are re-applied to the current one when they fit;
        raises ProposalError when the changes do not apply."""
        p = planned.proposal
        if p.source is None:
            return self.validator.params(best_source, p.changes)[1], best, best_source
        if (planned.fix_of is None and planned.base_trial != best and p.changes
                and self.settings.proposer.mode == "params"):
            try:
                return self.validator.params(best_source, p.changes)[1], best, best_source
            except ProposalError:
                pass
        return p.source, planned.base_trial, planned.base_source


def _crash_text(t: TrialRecord) -> str:
    if t.exception:
        return f"{t.exception.get('type')}: {t.exception.get('message')}"
    return f"job status {t.job_status}"
