"""The mechanisms of a run, wired into the inner loop at fixed points of each trial.

- `context`: text for the proposer's prompt (a planner context hook);
- `suggest`: on every `suggest_every`-th trial, the first usable suggestion TAKES THE
  PLACE of the proposer's proposal for that trial (recorded as the trial's
  `proposal_source` "mechanism:<name>"); on other trials suggest is not called;
- Level 2's candidate (`put_on_trial`): on the trials of its window a seeded coin per
  pair of trials (research/level2/verdict.py) runs it WITH or WITHOUT; left out, none of
  its hooks but observe is called; in, its suggestion goes first and it suggests on
  every such trial, whatever `suggest_every`; each assignment is stored for its verdict;
- `filter`: every proposal (the proposer's or a suggestion) passes the filters; a reject
  goes back to the proposer with its reason (`filter_retries` times, then the last
  proposal runs anyway, marked so), a replacement runs instead;
- `observe`: every finished trial, then `save_state`, stored in the trial's transaction.

Every hook call becomes a HookRecord stored with its trial (store/mechanisms.py), so a
report proves which mechanisms ran and what they changed. Credit goes only to what ran:
once the trial's proposal is settled, suggestions that did not become it are relabelled
"offered", filter verdicts that did not change it "superseded", and prompt text of a
trial a suggestion took over "offered" (research/level2/records.py). A mechanism that fails is
disabled by the MechanismSet; here its row is marked disabled with the traceback, for
the next Level-2 round to read. On resume, live mechanisms are re-activated from their
stored source and the state saved with the last finished trial.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

import structlog

from controller.research.level1.proposer import Proposal, Proposer, ProposerContext
from controller.research.level1.space import SearchSpace
from controller.research.level2 import verdict as level2_verdict
from controller.research.level2.gates import Admission, GateSettings, gate_and_activate
from controller.research.level2.records import Effect, HookRecord
from controller.research.level2.runtime import MechanismSet, MechanismSettings, Outcome, Suggestion
from controller.research.settings import RunSettings
from controller.research.task import Task
from controller.sandbox.backend import SandboxBackend
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
from mechanisms.wire import LoopState, MechanismProposal, TrialView

log = structlog.get_logger(__name__)
HISTORY = 30  # finished trials shown to mechanisms in the loop state
# A filter verdict counts only when its pass ended this way: a reject made the proposer
# try again, a replacement ran.
NEEDED = {Effect.REJECTED: "retried", Effect.REPLACED: "changed"}


class MechanismWiring:
    def __init__(self, run_id: str, settings: RunSettings, task: Task, store: RunStore,
                 artifacts: ArtifactStore, executor: SandboxBackend, space: SearchSpace,
                 mechanism_settings: MechanismSettings | None = None,
                 gate_settings: GateSettings | None = None) -> None:
        self.run_id = run_id
        self.settings = settings
        self.task = task
        self.store = store
        self.artifacts = artifacts
        self.gate_settings = gate_settings
        self.mset = MechanismSet(executor, space, mechanism_settings)
        self._run_knobs = frozenset(space.names)  # the run's space before Level 1.5
        self.log = MechanismLog(store)
        self._lock = threading.RLock()  # one caller at a time into the MechanismSet
        self._pending: dict[int, list[HookRecord]] = defaultdict(list)
        self._source: dict[int, str] = {}
        self._configs: dict[int, dict[str, Any]] = {}
        self.reads_context = True  # set from the proposer by outer.attach_outer_levels
        self._candidate: tuple[str, int] | None = None  # Level 2's, and its first trial

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
        """Level 1.5 froze or unfroze knobs: answers are checked against the new space,
        and an answer naming a frozen knob is skipped (recorded), not a failure."""
        with self._lock:
            self.mset.space = space
            self.mset.frozen = self._run_knobs - set(space.names)

    # Level 2's candidate and its with/without design

    def put_on_trial(self, name: str, start: int) -> None:
        with self._lock:
            self._candidate = (name, start)

    def end_trial(self) -> None:
        with self._lock:
            self._candidate = None

    def arm(self, index: int) -> tuple[str, bool] | None:
        """(candidate, runs with it) for a trial proposed while a candidate is on trial."""
        c = self._candidate
        if c is None or index < c[1] or c[0] not in self.mset.active:
            return None
        return c[0], level2_verdict.with_arm(self.settings.search.seed, c[0], c[1], index)

    def assignments(self, name: str) -> dict[str, list[int]]:
        raw = self.log.outer_state(self.run_id, f"arms:{name}") or {}
        return {"with": list(raw.get("with", [])), "without": list(raw.get("without", []))}

    def _assign(self, name: str, index: int, with_: bool) -> None:
        with self._lock:
            arms = self.assignments(name)
            key = "with" if with_ else "without"
            if index not in arms[key]:
                arms[key].append(index)
                self.log.set_outer_state(self.run_id, f"arms:{name}", arms)

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
        status = wire_status(t.status)
        config = {k: v for k, v in self._config(t.index).items() if k in names}
        return TrialView(t.index, dict(t.changes), config, status,
                         t.val_bpb, best, t.description[:300], crash[:500])

    # Hooks around a proposal (worker threads)

    def _call(self, index: int, fn: Callable[[], Outcome[Any]]) -> Any:
        with self._lock:
            out = fn()
        self._pending[index] += out.records
        self._handle_failures(out.records, index)
        return out.value

    def _filter(self, index: int, proposal: MechanismProposal, state: LoopState,
                skip: frozenset[str]) -> MechanismProposal | None:
        verdict: MechanismProposal | None = self._call(
            index, lambda: self.mset.filter(proposal, state, skip))
        return verdict

    def context_hook(self, ctx: ProposerContext) -> str:
        """Not called for a proposer that reads no prompt (the random baseline): its
        text would change nothing, and a record would claim an effect that never was."""
        if not self.mset.active or ctx.crash is not None or not self.reads_context:
            return ""
        state = self.state(ctx.trial_index)
        arm = self.arm(ctx.trial_index)
        skip = frozenset({arm[0]}) if arm is not None and not arm[1] else frozenset()
        text: str = self._call(ctx.trial_index, lambda: self.mset.context(state, skip))
        return text

    def _suggest(self, index: int, state: LoopState, space: set[str],
                 arm: tuple[str, bool] | None) -> Suggestion | None:
        """The suggestion that takes the trial, if any: on the cadence every mechanism's
        (the candidate's first on a WITH trial); off it only a WITH candidate's."""
        every = self.settings.outer.suggest_every
        on_cadence = bool(every) and index % every == 0
        skip: frozenset[str] = frozenset()
        if not on_cadence:
            if arm is None or not arm[1] or "suggest" not in self.mset.hooks(arm[0]):
                return None
            skip = frozenset(n for n in self.mset.active if n != arm[0])
        elif arm is not None and not arm[1]:
            skip = frozenset({arm[0]})
        found: list[Suggestion] = self._call(index, lambda: self.mset.suggest(state, skip))
        usable = [s for s in found if set(s.proposal.changes) <= space]
        if arm is not None and arm[1]:
            usable.sort(key=lambda s: s.mechanism != arm[0])  # stable: candidate first
        return usable[0] if usable else None

    def propose(self, inner: Proposer, ctx: ProposerContext) -> Proposal:
        """The trial's proposal after suggest and filter (see the module docstring)."""
        index, outer = ctx.trial_index, self.settings.outer
        if not self.mset.active or ctx.crash is not None:
            return inner.propose(ctx)
        state = self.state(index)
        arm = self.arm(index)
        if arm is not None:
            self._assign(arm[0], index, arm[1])
        skip = frozenset({arm[0]}) if arm is not None and not arm[1] else frozenset()
        proposal: Proposal | None = None
        source = "proposer"
        first = len(self._pending[index])
        s = self._suggest(index, state, set(ctx.space.names), arm)
        if s is not None:
            # The knobs it changes first: a mechanism's own text ("CMA-ES advisor:
            # generation 1") says nothing of what the trial tried.
            changed = changed_knobs(state.incumbent, s.proposal.changes)
            proposal = Proposal(changes=dict(s.proposal.changes),
                                description=f"{changed} ({s.proposal.description}) "
                                            f"[suggested by {s.mechanism}]")
            source = f"mechanism:{s.mechanism}"
        attempts: list[tuple[int, int, str]] = []  # record range of each filter pass, fate
        rejections: list[str] = []
        for attempt in range(1 + outer.filter_retries):
            if proposal is None:
                proposal = inner.propose(replace(ctx, rejections=tuple(rejections)))
                source = "proposer"
            if proposal.invalid or not proposal.changes:
                break
            current = proposal
            wire = MechanismProposal(dict(current.changes), current.description[:2000])
            before = len(self._pending[index])
            verdict = self._filter(index, wire, state, skip)
            after = len(self._pending[index])
            if verdict is None:
                rec = next(r for r in self._pending[index][before:]
                           if r.effect is Effect.REJECTED)
                rejections.append(f"{rec.mechanism} rejected {current.description[:200]!r}: "
                                  f"{rec.detail}")
                if attempt == outer.filter_retries:
                    attempts.append((before, after, "overridden"))
                    proposal = replace(current, description=current.description +
                                       " [ran although rejected: filter retries spent]")
                    break
                attempts.append((before, after, "retried"))
                proposal = None
                continue
            attempts.append((before, after, "changed" if verdict.changes != current.changes
                             else "passed"))
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
        self._credit(index, first, source, attempts)
        return proposal

    def _credit(self, index: int, first: int, source: str,
                attempts: list[tuple[int, int, str]]) -> None:
        """Relabel this proposal's records so that only what changed the trial is
        effective: the suggestion that became it, a reject that made the proposer try
        again, a replacement that ran, prompt text of a trial the proposer made."""
        recs = self._pending[index]
        fate = {i: f for lo, hi, f in attempts for i in range(lo, hi)}
        took = source.split("+")[0]
        for i, r in enumerate(recs):
            new = r.effect
            if r.effect is Effect.CONTEXT_ADDED and took != "proposer":
                new = Effect.OFFERED
            elif i < first:
                continue
            elif r.effect is Effect.SUGGESTED and took != f"mechanism:{r.mechanism}":
                new = Effect.OFFERED
            elif r.effect in NEEDED and fate.get(i) != NEEDED[r.effect]:
                new = Effect.SUPERSEDED
            if new is not r.effect:
                recs[i] = replace(r, effect=new, detail=f"{r.detail} [{new.value}: the "
                                  f"trial came from {source}]"[:2000])

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
        view = TrialView(index, changes, config, wire_status(status),
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


def wire_status(status: TrialStatus | None) -> Literal["keep", "discard", "crash"]:
    """A trial's status as mechanisms see it (mechanisms/wire.py's closed set): a pruned
    trial, stopped without a score, is a crash to them."""
    if status is TrialStatus.KEEP:
        return "keep"
    return "discard" if status is TrialStatus.DISCARD else "crash"


def changed_knobs(incumbent: dict[str, Any], changes: dict[str, Any]) -> str:
    """`NAME old -> new` for each changed knob, comma-separated (floats to 4 digits)."""
    def shown(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return repr(value) if isinstance(value, str) else str(value)
    return ", ".join(f"{name} {shown(incumbent[name]) if name in incumbent else '?'} -> "
                     f"{shown(value)}" for name, value in changes.items())
