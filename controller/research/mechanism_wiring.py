"""The mechanisms of a run, wired into the inner loop at fixed points of each trial.

- `context`: text for the proposer's prompt (a planner context hook);
- `suggest`: on every `suggest_every`-th trial, the first usable suggestion TAKES THE
  PLACE of the proposer's proposal for that trial (recorded as the trial's
  `proposal_source` "mechanism:<name>"); on other trials suggest is not called;
- `filter`: every proposal (the proposer's or a suggestion) passes the filters; a reject
  goes back to the proposer with its reason (`filter_retries` times, then the last
  proposal runs anyway, marked so), a replacement runs instead;
- `observe`: every finished trial, then `save_state`, stored in the trial's transaction.

Every hook call becomes a HookRecord stored with its trial (store/mechanisms.py), so a
report proves which mechanisms ran and what they changed. A mechanism that fails is
disabled by the MechanismSet; here its row is marked disabled with the traceback, for
the next Level-2 round to read. On resume, live mechanisms are re-activated from their
stored source and the state saved with the last finished trial.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import structlog

from controller.research.proposer import Proposal, Proposer, ProposerContext
from controller.research.settings import RunSettings
from controller.research.space import SearchSpace
from controller.research.task import Task
from controller.sandbox.executor import SandboxExecutor
from controller.store.artifacts import ArtifactStore
from controller.store.mechanisms import (
    ACTIVE,
    DISABLED,
    GATE_REJECTED,
    LIVE,
    MechanismLog,
    MechanismRow,
)
from controller.store.records import EventKind, NotFoundError, TrialRecord, TrialStatus
from controller.store.runs import RunStore
from mechanisms import library
from mechanisms.gates import Admission, GateSettings, gate_and_activate
from mechanisms.records import Effect, HookRecord
from mechanisms.runtime import MechanismSet, MechanismSettings, Outcome
from mechanisms.wire import LoopState, TrialView
from mechanisms.wire import Proposal as WireProposal

log = structlog.get_logger(__name__)
HISTORY = 30  # finished trials shown to mechanisms in the loop state


class MechanismWiring:
    def __init__(self, run_id: str, settings: RunSettings, task: Task, store: RunStore,
                 artifacts: ArtifactStore, executor: SandboxExecutor, space: SearchSpace,
                 mechanism_settings: MechanismSettings | None = None,
                 gate_settings: GateSettings | None = None) -> None:
        self.run_id = run_id
        self.settings = settings
        self.task = task
        self.store = store
        self.artifacts = artifacts
        self.gate_settings = gate_settings
        self.mset = MechanismSet(executor, space, mechanism_settings)
        self.log = MechanismLog(store)
        self._lock = threading.RLock()  # one caller at a time into the MechanismSet
        self._pending: dict[int, list[HookRecord]] = defaultdict(list)
        self._source: dict[int, str] = {}
        self._configs: dict[int, dict[str, Any]] = {}
        self.reads_context = True  # set from the proposer by outer.attach_outer_levels

    # Lifecycle

    def start(self) -> None:
        """Resume live mechanisms from the store; admit starting ones not tried yet."""
        known = {r.name: r for r in self.log.mechanisms(self.run_id)}
        for row in known.values():
            if row.status in LIVE:
                self._reactivate(row)
        for m in self.settings.outer.mechanisms:
            if m.name in known:
                continue
            source = m.source or library.source(m.name)
            row = MechanismRow(m.name, "initial", source, field="starting set",
                               description="named in the run's starting set")
            self.admit(row, at_trial=0)

    def close(self) -> None:
        with self._lock:
            self.mset.close()

    def set_space(self, space: SearchSpace) -> None:
        """Level 1.5 froze or unfroze knobs: answers are checked against the new space."""
        self.mset.space = space

    def _reactivate(self, row: MechanismRow) -> None:
        saved = self.log.saved_state(self.run_id, row.name)
        with self._lock:
            record = self.mset.activate(row.name, row.source, saved)
        if record.failure is not None:
            self._disable(row, record, None)
        else:
            log.info("mechanism resumed", mechanism=row.name, restored_state=saved is not None)
            self.event("resumed", row, None, f"re-activated with saved state "
                       f"{'restored' if saved is not None else '(none saved)'}")

    def admit(self, row: MechanismRow, at_trial: int) -> Admission:
        """Gates, cheapest first (static -> sandboxed contract test -> activation)."""
        with self._lock:
            admission = gate_and_activate(self.mset, row.name, row.source, self.gate_settings)
        row.gates = [{"gate": v.gate, "passed": v.passed, "reason": v.reason,
                      "traceback": v.traceback, "seconds": round(v.seconds, 3)}
                     for v in admission.verdicts]
        if admission.passed:
            row.status, row.activated_at = ACTIVE, at_trial + 1
            self.log.put(self.run_id, row)
            self.event("activated", row, at_trial, admission.verdicts[-1].reason)
        else:
            bad = next(v for v in admission.verdicts if not v.passed)
            row.status, row.ended_at = GATE_REJECTED, at_trial
            row.reason = f"stopped at the {bad.gate} gate: {bad.reason}"
            row.traceback = bad.traceback
            row.failure = bad.failure.to_json() if bad.failure else None
            self.log.put(self.run_id, row)
            self.event("gate_rejected", row, at_trial, row.reason, bad.traceback)
        return admission

    def deactivate(self, row: MechanismRow, status: str, reason: str, at_trial: int) -> None:
        with self._lock:
            self.mset.deactivate(row.name)
        row.status, row.reason, row.ended_at = status, reason, at_trial
        self.log.put(self.run_id, row)
        self.event(status, row, at_trial, reason)

    def event(self, action: str, row: MechanismRow, trial: int | None, detail: str,
              traceback: str = "") -> None:
        self.store.append_event(self.run_id, EventKind.MECHANISM, {
            "mechanism": row.name, "action": action, "trial": trial if trial is not None
            else -1, "origin": row.origin, "field": row.field, "detail": detail[:2000],
            "traceback": traceback[-4000:]})

    # The loop state mechanisms see

    def state(self, trial_index: int) -> LoopState:
        space = self.mset.space
        names = set(space.names)
        run = self.store.get_run(self.run_id)
        trials = [t for t in self.store.trials(self.run_id) if t.finished and t.status]
        best, views = None, []
        for t in trials:
            views.append(self._view(t, names, best))
            if t.status is TrialStatus.KEEP:
                best = t.val_bpb
        incumbent: dict[str, Any] = {}
        if run.best_trial is not None:
            incumbent = {k: v for k, v in self._config(run.best_trial).items() if k in names}
        return LoopState(space, incumbent, run.best_val_bpb, trial_index,
                         self.settings.search.seed, tuple(views[-HISTORY:]))

    def _config(self, index: int) -> dict[str, Any]:
        if index not in self._configs:
            try:
                source = self.artifacts.read_trial(self.run_id, index, "train.py").decode()
                self._configs[index] = self.task.read_knobs(source)
            except (NotFoundError, SyntaxError, ValueError):
                return {}
        return self._configs[index]

    def _view(self, t: TrialRecord, names: set[str], best: float | None) -> TrialView:
        exc = t.exception or {}
        crash = f"{exc.get('type', '')}: {exc.get('message', '')}" if exc else ""
        status = t.status.value if t.status else "crash"
        config = {k: v for k, v in self._config(t.index).items() if k in names}
        return TrialView(t.index, dict(t.changes), config, status,  # type: ignore[arg-type]
                         t.val_bpb, best, t.description[:300], crash[:500])

    # Hooks around a proposal (worker threads)

    def _call(self, index: int, fn: Callable[[], Outcome[Any]]) -> Any:
        with self._lock:
            out = fn()
        self._pending[index] += out.records
        self._handle_failures(out.records, index)
        return out.value

    def _filter(self, index: int, proposal: WireProposal,
                state: LoopState) -> WireProposal | None:
        verdict: WireProposal | None = self._call(index,
                                                  lambda: self.mset.filter(proposal, state))
        return verdict

    def context_hook(self, ctx: ProposerContext) -> str:
        """Not called for a proposer that reads no prompt (the random baseline): its
        text would change nothing, and a record would claim an effect that never was."""
        if not self.mset.active or ctx.crash is not None or not self.reads_context:
            return ""
        state = self.state(ctx.trial_index)
        text: str = self._call(ctx.trial_index, lambda: self.mset.context(state))
        return text

    def propose(self, inner: Proposer, ctx: ProposerContext) -> Proposal:
        """The trial's proposal after suggest and filter (see the module docstring)."""
        index, outer = ctx.trial_index, self.settings.outer
        if not self.mset.active or ctx.crash is not None:
            return inner.propose(ctx)
        state = self.state(index)
        proposal: Proposal | None = None
        source = "proposer"
        if outer.suggest_every and index % outer.suggest_every == 0:
            found = self._call(index, lambda: self.mset.suggest(state))
            usable = [s for s in found if set(s.proposal.changes) <= set(ctx.space.names)]
            if usable:
                s = usable[0]
                proposal = Proposal(changes=dict(s.proposal.changes),
                                    description=f"{s.proposal.description} "
                                                f"[suggested by {s.mechanism}]")
                source = f"mechanism:{s.mechanism}"
        rejections: list[str] = []
        for attempt in range(1 + outer.filter_retries):
            if proposal is None:
                proposal = inner.propose(replace(ctx, rejections=tuple(rejections)))
                source = "proposer"
            if proposal.invalid or not proposal.changes:
                break
            current = proposal
            wire = WireProposal(dict(current.changes), current.description[:2000])
            before = len(self._pending[index])
            verdict = self._filter(index, wire, state)
            if verdict is None:
                rec = next(r for r in self._pending[index][before:]
                           if r.effect is Effect.REJECTED)
                rejections.append(f"{rec.mechanism} rejected {current.description[:200]!r}: "
                                  f"{rec.detail}")
                if attempt == outer.filter_retries:
                    proposal = replace(current, description=current.description +
                                       " [ran although rejected: filter retries spent]")
                    break
                proposal = None
                continue
            if verdict.changes != current.changes:
                code = current.source is not None and self.settings.proposer.mode == "code"
                proposal = replace(
                    current, changes=dict(verdict.changes),
                    source=self.task.apply(current.source, verdict.changes)
                    if code and current.source is not None else None,
                    description=f"{verdict.description} [replaced by a mechanism filter]")
                source += "+filter"
            break
        assert proposal is not None
        self._source[index] = source
        return proposal

    # After a trial (the coordinator thread)

    def finish(self, index: int, status: TrialStatus, val_bpb: float | None,
               crash: str) -> tuple[tuple[dict[str, Any], ...], dict[str, Any] | None, str]:
        """Observe the judged trial and save states: (records, states, proposal source)
        for finish_trial's transaction."""
        records = self._pending.pop(index, [])
        source = self._source.pop(index, "proposer" if index else "baseline")
        if not self.mset.active:
            return tuple(r.to_json() for r in records), None, source
        state = self.state(index)
        trials = {t.index: t for t in self.store.trials(self.run_id)}
        t = trials.get(index)
        changes = dict(t.changes) if t else {}
        names = set(self.mset.space.names)
        config = {k: v for k, v in self._config(index).items() if k in names}
        view = TrialView(index, changes, config, status.value,
                         val_bpb, state.best_val_bpb, (t.description if t else "")[:300],
                         crash[:500])
        with self._lock:
            observed = self.mset.observe(view, state)
            saved = self.mset.save_states()
        records += observed.records
        records += [r for r in saved.records if r.effect is Effect.FAILED]
        self._handle_failures(records, index)
        return tuple(r.to_json() for r in records), saved.value, source

    def _handle_failures(self, records: list[HookRecord], index: int) -> None:
        for rec in records:
            if rec.effect is not Effect.FAILED or rec.failure is None:
                continue
            rows = {r.name: r for r in self.log.mechanisms(self.run_id)}
            row = rows.get(rec.mechanism)
            if row is not None and row.status in LIVE:
                self._disable(row, rec, index)

    def _disable(self, row: MechanismRow, rec: HookRecord, index: int | None) -> None:
        failure = rec.failure
        row.status, row.ended_at = DISABLED, index
        row.reason = f"failed at runtime in {rec.hook}: {rec.detail}"
        row.failure = failure.to_json() if failure else None
        row.traceback = (failure.traceback_text() or failure.stderr[-2000:]) if failure else ""
        self.log.put(self.run_id, row)
        log.warning("mechanism disabled", mechanism=row.name, hook=rec.hook, reason=rec.detail)
        self.event("disabled", row, index, row.reason, row.traceback)


class MechanizedProposer:
    """The run's proposer with the mechanisms' suggest and filter hooks around it."""

    def __init__(self, inner: Proposer, wiring: MechanismWiring) -> None:
        self.inner = inner
        self.wiring = wiring
        self.label = f"{inner.label} + mechanisms"
        self.fixes_crashes = inner.fixes_crashes

    def propose(self, ctx: ProposerContext) -> Proposal:
        return self.wiring.propose(self.inner, ctx)
