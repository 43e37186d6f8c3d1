"""Level 1, the inner loop: baseline, then propose -> validate -> sandbox -> keep/discard.

Up to `batch_size` trials run at once, each on its own sandbox slot; with `pipeline`
the next proposals are prepared while trials run, so a slot that frees finds its next
trial ready instead of waiting for the LLM. Results are judged in trial order, whatever
order they finish in, so decisions do not depend on timing.

State lives in the store, not in this object. Finished trials form a prefix; a loop
built on a run that a killed controller left behind re-runs the trials that had begun
but not finished (their stored train.py, under the same index) and never runs or counts
a finished one twice. Proposals always start from the incumbent best (or, for a crash
fix, from the crashed candidate). An LLM that fails for good pauses the run.

Later levels hook in here: `context_hooks` (text for the proposer's prompt),
`mechanisms` (research/level2/wiring.py: suggest/filter around the proposer, observe
in `_judge`), `after_trial` (Levels 1.5 and 2, after each judged trial), `set_frozen`
(Level 1.5), and `start_hooks` / `exit_hooks` around `run`.
"""

from __future__ import annotations

import difflib
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

import structlog

from controller.llm.errors import LLMBudgetSpent, LLMUnavailable
from controller.research.lessons import distill
from controller.research.level1 import evaluation
from controller.research.level1.evaluation import Evaluation
from controller.research.level1.final_check import FinalCheck, fresh_seeds, run_check
from controller.research.level1.keep import Incumbent, make_rule
from controller.research.level1.llm_report import llm_line, never_usable
from controller.research.level1.planner import ContextHook, Planned, Planner
from controller.research.level1.proposer import Proposal, Proposer
from controller.research.level1.pruners import make_pruner
from controller.research.level1.results import results_tsv
from controller.research.level1.space import ProposalError, SearchSpace
from controller.research.level1.validate import Validator, knob_changes
from controller.research.level1.watch import ProgressWatch
from controller.research.settings import Budgets, RunSettings
from controller.research.task import (
    FORGEABLE,
    GPT,
    Objective,
    Task,
    TrialOutcome,
    memory_key,
    objective_of,
)
from controller.research.tasks.knob_document import editable_path
from controller.store.artifacts import ArtifactStore
from controller.store.llm_calls import CallLog
from controller.store.memory import MemoryStore, StrategyResult
from controller.store.records import (
    EventKind,
    NotFoundError,
    RunRecord,
    RunState,
    TrialFinish,
    TrialMeta,
    TrialRecord,
    TrialStatus,
)
from controller.store.runs import RunStore

if TYPE_CHECKING:
    from controller.research.level2.wiring import MechanismWiring

log = structlog.get_logger(__name__)
POLL_SECONDS = 0.5  # how often the coordinator looks at the stop signal while waiting


class StopSignal:
    """Set by CancelRun ("cancelled", `by` the principal that cancelled) or a controller
    shutdown ("shutdown"). A shutdown leaves the run resumable; a cancel finishes it."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: str | None = None
        self.by = ""

    def request(self, reason: str, by: str = "") -> None:
        if self.reason is None:
            self.reason, self.by = reason, by
        self.event.set()


def llm_budget_reason(run: RunRecord, budgets: Budgets) -> str:
    """Why no further LLM call may be made, or "" while the budget lasts."""
    if budgets.max_llm_tokens and run.llm_tokens_used >= budgets.max_llm_tokens:
        return f"LLM token budget of {budgets.max_llm_tokens} spent"
    if budgets.max_llm_cost_usd and run.llm_cost_usd >= budgets.max_llm_cost_usd:
        return f"LLM cost budget of ${budgets.max_llm_cost_usd:g} spent"
    return ""


class InnerLoop:
    def __init__(self, run_id: str, settings: RunSettings, task: Task, proposer: Proposer,
                 store: RunStore, artifacts: ArtifactStore, stop: StopSignal,
                 lessons: Sequence[str] = (), memory: MemoryStore | None = None,
                 memory_owner: str | None = None) -> None:
        self.run_id = run_id
        self.settings = settings
        self.task = task
        self.proposer = proposer
        self.store = store
        self.artifacts = artifacts
        self.stop = stop
        self.lessons = tuple(lessons)  # memory of earlier runs, for the prompt only
        self.memory = memory  # where this run's lessons go when it finishes (None: nowhere)
        # Whose earlier runs it learns from (lessons, Level 2's verdicts): its owner's, or
        # None when the operator shares memory between principals.
        self.memory_owner = memory_owner
        self.space: SearchSpace = task.search_space().without(settings.search.frozen_knobs)
        self.validator = Validator(task, self.space)
        self.rule = make_rule(settings.search)
        self.calls = CallLog(store)
        # Trials' reported curves and the pruner that may stop them (watch.py).
        self.watch = ProgressWatch(run_id, store, objective_of(task),
                                   make_pruner(settings.search.pruning()), stop.event)
        self.planner = Planner(run_id, settings, task, proposer, store, artifacts,
                               self.space, self.validator, self.lessons)
        # Text for the proposer's prompt; Level 2's mechanisms add their hooks here.
        self.context_hooks: list[ContextHook] = self.planner.context_hooks
        self.mechanisms: MechanismWiring | None = None
        self.after_trial: list[Callable[[int], None]] = []  # called with each judged index
        self.start_hooks: list[Callable[[], None]] = []
        self.exit_hooks: list[Callable[[], None]] = []
        self._segment_start = time.monotonic()
        self._elapsed_before = 0.0
        self._lock = threading.Lock()
        self._in_flight: dict[int, str] = {}  # launched, not judged: index -> description
        self._proposal_ids: dict[int, str] = {}
        self._next_judge = 0

    def run(self) -> None:
        with structlog.contextvars.bound_contextvars(run_id=self.run_id):
            try:
                for hook in self.start_hooks:
                    hook()
                self._run()
            finally:
                for hook in self.exit_hooks:
                    hook()

    def set_frozen(self, frozen: Sequence[str]) -> SearchSpace:
        """Freeze these knobs on top of the run's own frozen ones (Level 1.5)."""
        names = tuple(dict.fromkeys((*self.settings.search.frozen_knobs, *frozen)))
        self.space = self.task.search_space().without(names)
        self.validator.space = self.planner.space = self.space
        if self.mechanisms is not None:
            self.mechanisms.set_space(self.space)
        return self.space

    def _run(self) -> None:
        run = self.store.get_run(self.run_id)
        self._elapsed_before = run.elapsed_seconds
        trials = self.store.trials(self.run_id)
        finished = sum(1 for t in trials if t.finished)
        self.store.append_event(self.run_id, EventKind.RUN_STARTED,
                                {"resumed": bool(trials), "next_trial": finished})
        log.info("run started", resumed=bool(trials), next_trial=finished,
                 proposer=self.proposer.label, batch=self.settings.search.batch_size,
                 keep_rule=self.settings.search.keep_rule)
        plan = getattr(self.task, "parallel_note", None)  # time-budgeted tasks: cores
        if plan is not None and (note := plan(self.settings.search.batch_size)):
            log.warning(note)
        self._write_results()
        if finished == 0 and not self._baseline():
            return
        self._search()

    # The baseline

    def _baseline(self) -> bool:
        """Run (or re-run) trial 0 on the keep rule's seeds; False if the run ended."""
        source = self.task.baseline_source()
        self._prepare(0, source, source, {}, "baseline", TrialMeta(), None)
        cancel = self.watch.begin(0, prunable=False)  # every later trial's first reference
        result = evaluation.evaluate(self.task, source, self._seeds(self.rule.baseline_seeds),
                                     cancel, progress=self.watch.sink(0))
        if result is None:
            self._stopped()
            return False
        self._judge(0, result)
        if result.outcome.crashed:
            self._finish(RunState.FAILED, "the baseline crashed: " + _crash_text(
                result.outcome))
            return False
        return True

    # The search: propose, launch, judge in order

    def _search(self) -> None:
        search, budgets = self.settings.search, self.settings.budgets
        width = search.batch_size
        lookahead = width if search.pipeline else 0
        pool = ThreadPoolExecutor(max_workers=2 * width + 1,
                                  thread_name_prefix=f"loop-{self.run_id}")
        running: dict[Future[Evaluation | None], int] = {}
        done: dict[int, Evaluation] = {}
        pending: deque[Future[Planned]] = deque()
        trials = self.store.trials(self.run_id)
        self._next_judge = sum(1 for t in trials if t.finished)
        next_index = max((t.index for t in trials), default=0) + 1
        for t in trials:
            if not t.finished:
                self._relaunch(t, running, pool)
        halt: tuple[str, str] | None = None  # ("finish" or "pause", reason): drop pending
        spent = ""  # the LLM budget: no new proposals, but those already paid for still run
        clean = False
        try:
            while True:
                self._judge_ready(done)
                if self.stop.event.is_set():
                    self._stopped()
                    clean = True
                    return
                if halt is None and (reason := self._wall_spent()):
                    halt = ("finish", reason)
                spent = spent or llm_budget_reason(self.store.get_run(self.run_id), budgets)
                while halt is None and not spent \
                        and len(pending) < width - len(running) + lookahead \
                        and next_index <= budgets.max_trials:
                    pending.append(pool.submit(self.planner.propose, next_index,
                                               self.planner.fix_target(), self._in_flight_now()))
                    next_index += 1
                while halt is None and pending and len(running) < width and pending[0].done():
                    try:
                        planned = pending.popleft().result()
                    except LLMBudgetSpent as exc:
                        halt = ("finish", str(exc))
                    except LLMUnavailable as exc:
                        halt = ("pause", str(exc))
                    else:
                        self._launch(planned, running, done, pool)
                if halt is not None:
                    pending.clear()  # abandoned; their calls are in the call log already
                if not running and not pending and not done:
                    if halt is not None and halt[0] == "pause":
                        self._pause(halt[1])
                    else:
                        self._finish(RunState.SUCCEEDED, halt[1] if halt else spent or
                                     f"trial budget of {budgets.max_trials} spent")
                    clean = True
                    return
                waitables: set[Future[object]] = set(running)  # type: ignore[arg-type]
                if pending and len(running) < width:
                    waitables.add(pending[0])  # type: ignore[arg-type]
                wait(waitables, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
                for future in [f for f in running if f.done()]:
                    index = running.pop(future)
                    result = future.result()
                    if result is not None:
                        done[index] = result
        finally:
            if not clean:
                self.stop.event.set()  # an error: stop the trials still in flight
            pool.shutdown(wait=False, cancel_futures=True)

    def _seeds(self, count: int) -> list[int]:
        return [self.settings.search.seed + r for r in range(count)]

    def _incumbent(self) -> Incumbent:
        run = self.store.get_run(self.run_id)
        assert run.best_val_bpb is not None
        # Under the noise rule the baseline is a mean over its seeds and every kept
        # candidate a mean over its two runs.
        runs = self.rule.baseline_seeds if run.best_trial == 0 else (
            2 if self.settings.search.keep_rule == "noise" else 1)
        return Incumbent(run.best_val_bpb, run.noise_sigma, runs)

    def _evaluate(self, index: int, source: str) -> Evaluation | None:
        """Evaluate trial `index`; a trial the pruner stopped is a `pruned` evaluation."""
        start = time.time()
        cancel = self.watch.begin(index)
        result = self._evaluate_seeds(source, cancel, self.watch.sink(index))
        if result is None and not self.stop.event.is_set() and (
                why := self.watch.pruned(index)):
            return evaluation.pruned(why, start)
        return result

    def _evaluate_seeds(self, source: str, cancel: threading.Event,
                        progress: Callable[[str, bytes], None]) -> Evaluation | None:
        def keeps(values: Sequence[float]) -> bool:  # decides whether the seed check runs
            return self.rule.judge(values, self._incumbent()).status is TrialStatus.KEEP

        if self.settings.search.keep_rule == "greedy":
            return evaluation.evaluate(self.task, source, self._seeds(1), cancel,
                                       keeps=keeps, progress=progress)
        return evaluation.evaluate(
            self.task, source, self._seeds(2), cancel,
            confirm=lambda value: self.rule.wants_confirmation(value, self._incumbent()),
            keeps=keeps, progress=progress)

    def _in_flight_now(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(f"trial {i}: {d}" for i, d in sorted(self._in_flight.items()))

    def _launch(self, planned: Planned, running: dict[Future[Evaluation | None], int],
                done: dict[int, Evaluation], pool: ThreadPoolExecutor) -> None:
        p, index = planned.proposal, planned.index
        run = self.store.get_run(self.run_id)
        assert run.best_trial is not None
        best_source = self.artifacts.read_trial(self.run_id, run.best_trial, "train.py").decode()
        result: Evaluation | None = None
        parent, parent_source, candidate = planned.base_trial, planned.base_source, \
            planned.base_source
        if p.invalid:
            result = evaluation.invalid(p.invalid)
        else:
            try:
                candidate, parent, parent_source = self.planner.candidate(
                    planned, run.best_trial, best_source)
            except ProposalError as exc:
                result = evaluation.invalid(str(exc))
        changes = p.changes if result is not None else knob_changes(self.task, best_source,
                                                                    candidate)
        meta = TrialMeta(hypothesis=p.hypothesis, parent=parent, fix_of=planned.fix_of,
                         proposal_id=p.proposal_id, arm=p.arm, arm_probability=p.arm_probability,
                         llm_failure=p.llm_failure)
        self._prepare(index, parent_source, candidate, changes, p.description, meta, p)
        if result is not None:
            done[index] = result
        else:
            running[pool.submit(self._evaluate, index, candidate)] = index

    def _relaunch(self, t: TrialRecord, running: dict[Future[Evaluation | None], int],
                  pool: ThreadPoolExecutor) -> None:
        """Re-run a trial that began but never finished, from its stored train.py."""
        source = self.artifacts.read_trial(self.run_id, t.index, "train.py").decode()
        meta = TrialMeta(t.hypothesis, t.parent, t.fix_of, t.proposal_id, t.arm,
                         t.arm_probability, t.llm_failure)
        attempt = self.store.begin_trial(self.run_id, t.index, t.description, t.changes, meta)
        log.info("trial restarted", trial=t.index, attempt=attempt)
        with self._lock:
            self._in_flight[t.index] = t.description
        self._proposal_ids[t.index] = t.proposal_id
        running[pool.submit(self._evaluate, t.index, source)] = t.index

    def _prepare(self, index: int, parent_source: str, source: str, changes: dict[str, Any],
                 description: str, meta: TrialMeta, proposal: Proposal | None) -> None:
        """Store the candidate, its diff and its LLM transcript, then begin the trial."""
        path = editable_path(self.task)
        diff = "".join(difflib.unified_diff(
            parent_source.splitlines(keepends=True), source.splitlines(keepends=True),
            f"a/{path}", f"b/{path}"))
        self.artifacts.write_trial(self.run_id, index, "train.py", source.encode())
        self.artifacts.write_trial(self.run_id, index, "diff", diff.encode())
        if proposal is not None and proposal.proposal_id:
            self.artifacts.write_trial(self.run_id, index, "llm.json", json.dumps({
                "proposal_id": proposal.proposal_id, "llm_tokens": proposal.llm_tokens,
                "cost_usd": proposal.cost_usd, "transcript": list(proposal.transcript),
                "calls": self.calls.calls(self.run_id, proposal.proposal_id)},
                indent=1).encode())
        attempt = self.store.begin_trial(self.run_id, index, description, changes, meta)
        with self._lock:
            self._in_flight[index] = description
        self._proposal_ids[index] = meta.proposal_id
        log.info("trial started", trial=index, attempt=attempt, description=description)

    def _judge_ready(self, done: dict[int, Evaluation]) -> None:
        while self._next_judge in done:
            self._judge(self._next_judge, done.pop(self._next_judge))
            self._next_judge += 1

    def _judge(self, index: int, result: Evaluation) -> None:
        outcome, sigma = result.outcome, None
        if outcome.job_status == evaluation.PRUNED:
            status, reason = TrialStatus.PRUNED, outcome.detail
        elif outcome.crashed:
            status, reason = TrialStatus.CRASH, _crash_text(outcome)
        elif index == 0:
            status, reason = TrialStatus.KEEP, "the baseline"
            sigma = self.rule.sigma(result.values)
        else:
            verdict = self.rule.judge(result.values, self._incumbent())
            status, reason = verdict.status, verdict.reason
            if status is TrialStatus.KEEP and result.seed_checked is False:
                status = TrialStatus.DISCARD  # the incumbent moved while it ran
                reason += "; not kept: the seed check did not run for it"
        proposal_id = self._proposal_ids.pop(index, "")
        calls = self.calls.calls(self.run_id, proposal_id) if proposal_id else []
        hooks: tuple[dict[str, Any], ...] = ()
        states: dict[str, Any] | None = None
        source = "baseline" if index == 0 else "proposer"
        if self.mechanisms is not None:
            hooks, states, source = self.mechanisms.finish(
                index, status, outcome.val_bpb, reason if outcome.crashed else "")
        self.artifacts.write_trial(self.run_id, index, "log", outcome.log.encode())
        self.store.finish_trial(self.run_id, TrialFinish(
            index=index, status=status, val_bpb=outcome.val_bpb, memory_gb=outcome.memory_gb,
            metrics={**outcome.metrics, "decision": reason}, job_status=outcome.job_status,
            exception=outcome.exception, seconds=outcome.seconds,
            new_best=status is TrialStatus.KEEP, started_at=result.started_at,
            ended_at=result.ended_at,
            llm_tokens=sum(c["input_tokens"] + c["output_tokens"] for c in calls),
            llm_cost_usd=sum(c["cost_usd"] for c in calls), noise_sigma=sigma,
            mechanism_calls=hooks, mechanism_states=states, proposal_source=source,
            node=outcome.node),
            self._elapsed())
        self.watch.finish(index, status)
        with self._lock:
            self._in_flight.pop(index, None)
        objective = objective_of(self.task)
        shown = None if outcome.val_bpb is None else objective.shown(outcome.val_bpb)
        log.info("trial finished", trial=index, status=status.value,
                 job_status=outcome.job_status, decision=reason, **{objective.metric: shown})
        self._write_results()
        if index > 0:
            for hook in self.after_trial:
                hook(index)

    def _wall_spent(self) -> str:
        b = self.settings.budgets
        if b.max_wall_seconds and self._elapsed() >= b.max_wall_seconds:
            return f"wall-time budget of {b.max_wall_seconds:g} s spent"
        return ""

    def _elapsed(self) -> float:
        return self._elapsed_before + time.monotonic() - self._segment_start

    def _write_results(self) -> None:
        self.artifacts.write_results(self.run_id, results_tsv(
            self.store.trials(self.run_id), self._trial_source, objective_of(self.task)))

    def _trial_source(self, index: int) -> bytes | None:
        """A trial's train.py for results.tsv's content hash; None if it has none."""
        try:
            return self.artifacts.read_trial(self.run_id, index, "train.py")
        except NotFoundError:
            return None

    def _stopped(self) -> None:
        if self.stop.reason == "cancelled":
            self._finish(RunState.CANCELLED, f"cancelled by {self.stop.by or 'request'}")
        else:
            log.info("run paused for shutdown; it resumes when the controller restarts")

    def _pause(self, reason: str) -> None:
        self.store.pause_run(self.run_id, reason)
        log.warning("run paused: the LLM is unavailable", reason=reason)

    def _finish(self, state: RunState, reason: str) -> None:
        run = self.store.get_run(self.run_id)
        check = None
        if state is RunState.SUCCEEDED:
            check = self._final_check(run)
            if check is None and self.stop.event.is_set():
                self._stopped()  # a shutdown: the resumed run checks again
                return
        objective = objective_of(self.task)
        trials = self.store.trials(self.run_id)
        reason = "; ".join(filter(None, [never_usable(trials), reason]))
        summary = run_summary_line(run, reason, check, objective)
        report = getattr(self.proposer, "report", None)  # Level 2's portfolio says how
        if report is not None and (allocated := report(trials)):
            summary = f"{summary}; {allocated}"
        if llm := llm_line(self.calls.calls(self.run_id), trials):
            summary = f"{summary}; {llm}"
        improved = check.beats if check is not None else False
        if self.store.finish_run(self.run_id, state, reason, summary, {
                "state": state.value, "reason": reason, "baseline_val_bpb": run.baseline_val_bpb,
                "best_val_bpb": run.best_val_bpb, "improved": improved, "summary": summary,
                "metric": objective.metric, "direction": objective.direction,
                "final_check": check.to_json() if check is not None else None}) \
                and self.memory is not None:
            lessons = distill(memory_key(self.task), self.run_id,
                              self.store.trials(self.run_id), objective)
            self.memory.add(lessons, run.owner)
            log.info("lessons stored", count=len(lessons), task=memory_key(self.task))
            self._remember_strategy(run, check)
        log.info("run finished", state=state.value, summary=summary)

    def _remember_strategy(self, run: RunRecord, check: FinalCheck | None) -> None:
        """What this run's one search strategy gained, for Level 2's portfolio in later
        runs of the task (its lead). Only a run of Level 1 alone with no mechanism is a
        record of one strategy: a portfolio's arms share the trials, and the outer levels
        change what the proposer proposes."""
        outer = self.settings.outer
        if self.memory is None or outer.levels != ("1",) or outer.mechanisms or \
                run.baseline_val_bpb is None or run.best_val_bpb is None:
            return
        if check is not None:  # fresh seeds; a best that crashed on one gained nothing
            gain = 0.0 if check.crashed else -check.delta
        else:
            gain = run.baseline_val_bpb - run.best_val_bpb
        self.memory.add_strategy_result(StrategyResult(
            memory_key(self.task), self.run_id, self.settings.proposer.kind, run.trials_done,
            gain, run.owner))

    def _final_check(self, run: RunRecord) -> FinalCheck | None:
        """Best and baseline re-run on fresh paired seeds (final_check.py), stored as the
        run's final_check.json artifact; None when there is no best to check."""
        count = self.settings.search.final_seeds
        if not count or run.best_trial in (None, 0) or self.stop.event.is_set():
            return None
        best = self.artifacts.read_trial(self.run_id, run.best_trial, "train.py").decode()
        seeds = fresh_seeds(self.settings.search.seed, count)
        log.info("final check: best and baseline on fresh seeds", best_trial=run.best_trial,
                 seeds=seeds)
        check = run_check(self.task, best, self.task.baseline_source(), run.best_trial,
                          seeds, self.stop.event, run.noise_sigma)
        if check is not None:
            self.artifacts.write_run(self.run_id, "final_check.json",
                                     json.dumps(check.to_json(), indent=1).encode())
        return check


def run_summary_line(run: RunRecord, reason: str, check: FinalCheck | None = None,
                     objective: Objective = GPT) -> str:
    """One honest line: the search's numbers (in the task's metric), and whether the best
    beats the baseline on fresh seeds - "beats" only when the paired interval excludes 0.
    A task without a trusted scorer says its metric is forgeable."""
    text = _summary(run, reason, check, objective)
    return f"{text}; {FORGEABLE}" if objective.self_reported else text


def _summary(run: RunRecord, reason: str, check: FinalCheck | None,
             objective: Objective) -> str:
    base, best, n = run.baseline_val_bpb, run.best_val_bpb, max(run.trials_done - 1, 0)
    if base is None or best is None:
        return f"{reason}; no baseline result"
    name, shown = objective.metric, objective.shown
    if best >= base or run.best_trial in (None, 0):
        return f"{reason}; no improvement over the baseline {name} {shown(base):.6f} in {n} trials"
    sigma = f", σ {run.noise_sigma:.1e}" if run.noise_sigma else ""
    side = "above" if objective.maximize else "below"
    found = (f"{reason}; in the search the best {name} {shown(best):.6f} (trial "
             f"{run.best_trial}) was {base - best:.6f} {side} the baseline {shown(base):.6f}"
             f"{sigma} after {n} trials")
    if check is None:
        return f"{found}; not re-evaluated on fresh seeds, so not claimed better than it"
    return f"{found}; {check.verdict(objective)}"


def _crash_text(outcome: TrialOutcome) -> str:
    if outcome.exception:
        return f"{outcome.exception.get('type')}: {outcome.exception.get('message')}"
    return outcome.detail or f"job status {outcome.job_status}"


