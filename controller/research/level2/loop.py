"""Level 2, the mechanism loop: every `l2_every` trials (sooner when no trial was kept for
half of that), a round picks one new mechanism - from the LLM (research/level2/design.py)
or, offline, from the built-in library by a bandit over how each fared in earlier runs -
passes it through the gates cheapest first (static -> sandboxed contract test ->
activation) and puts it on trial. One candidate at a time; the mechanisms already kept
stay, so the previous set is the fallback.

The verdict is a concurrent randomised comparison (research/level2/verdict.py): over
the candidate's window (`window`, at least 8 trials) a seeded coin per pair of trials
runs one WITH the candidate and one WITHOUT, each trial scores its improvement over the
incumbent in noise sigmas, and a one-sided paired randomisation test decides: KEPT when
p <= 0.1 and it changed at least one WITH trial, else REVERTED. Comparing a window with
the one before it instead would confound the mechanism with the stage of the search
(keep rates fall as a search converges) and judge late candidates harshly. A window left
with too few complete pairs (pipelined trials proposed before activation, crash fixes)
is extended once; no round starts when fewer trials are left than a window needs, and a
candidate whose window a wall-time stop or a cancel cuts short is "not judged".
A candidate that fails at runtime is disabled at once (research/level2/wiring.py) and its
traceback goes to the next round's explore prompt.

An LLM designs a round in a background thread (explore, critique, spec: minutes on a
small local model), while the inner loop keeps its slots busy; the first trial to finish
after the design is done takes it through the gates. A design still running when the run
ends (or the controller stops) is dropped and said so; the next run or resume starts the
next round on schedule. A design done within DESIGN_GRACE_SECONDS is gated at once.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from controller.llm.errors import LLMBudgetSpent, LLMError, LLMUnavailable
from controller.research.level2 import verdict as level2_verdict
from controller.research.level2.design import (
    DesignError,
    LLMDesigner,
    choose_from_library,
    unique_name,
)
from controller.research.level2.wiring import MechanismWiring
from controller.store.mechanisms import DISABLED, KEPT, REVERTED, MechanismLog, MechanismRow
from controller.store.records import TrialRecord, TrialStatus
from mechanisms import library
from mechanisms.interface import ACTING_HOOKS

if TYPE_CHECKING:
    from controller.research.level1.loop import InnerLoop

log = structlog.get_logger(__name__)
STATE_KEY = "level2"
# A design that finishes within this (a fast API, a replay) is gated at once, so its
# candidate's window starts with the next trial; a slower one runs beside the trials.
DESIGN_GRACE_SECONDS = 2.0


@dataclass
class Level2State:
    rounds: int = 0
    last_round_trial: int = 0
    candidate: str = ""  # the mechanism on trial ("" when none)
    short_noted: bool = False  # "too few trials left for a round" was said


@dataclass
class Designing:
    """A round whose mechanism the LLM is designing in the background."""

    round: int
    trial: int  # the trial after which the round began
    why: str
    done: threading.Event = field(default_factory=threading.Event)
    row: MechanismRow | None = None
    error: str = ""


class MechanismLoop:
    """Runs rounds and judges candidates on the coordinator thread, after a trial; an
    LLM's design runs beside it."""

    def __init__(self, loop: InnerLoop, wiring: MechanismWiring,
                 designer: LLMDesigner | None) -> None:
        self.loop = loop
        self.wiring = wiring
        self.designer = designer  # None: the built-in library
        self.outer = loop.settings.outer
        self.log = MechanismLog(loop.store)
        raw = self.log.outer_state(loop.run_id, STATE_KEY)
        self.state = Level2State(**raw) if raw else Level2State()
        self.designing: Designing | None = None

    def attach(self) -> None:
        self.loop.after_trial.append(self.after_trial)
        self.loop.exit_hooks.append(self._drop_design)
        row = self._rows().get(self.state.candidate) if self.state.candidate else None
        if row is not None and row.activated_at is not None:  # a resumed run
            self.wiring.put_on_trial(row.name, row.activated_at)

    def _save(self) -> None:
        self.log.set_outer_state(self.loop.run_id, STATE_KEY, asdict(self.state))

    def _rows(self) -> dict[str, MechanismRow]:
        return {r.name: r for r in self.log.mechanisms(self.loop.run_id)}

    def _trace(self) -> list[TrialRecord]:
        return [t for t in self.loop.store.trials(self.loop.run_id)
                if t.finished and t.index > 0]

    def after_trial(self, index: int) -> None:
        if self.designing is not None:
            if not self.designing.done.is_set():
                return  # the LLM is still designing; the trials go on meanwhile
            self._designed(index, self.designing)
            self.designing = None
            return
        if self.state.candidate:
            row = self._rows().get(self.state.candidate)
            if row is None or row.status == DISABLED:
                self.state.candidate = ""  # failed at runtime: already recorded
                self._save()
                self.wiring.end_trial()
            elif row.window_end is not None and index >= row.window_end:
                self.judge(row, index)
        if self.state.candidate or (self.outer.max_l2_rounds and
                                    self.state.rounds >= self.outer.max_l2_rounds):
            return
        since = index - self.state.last_round_trial
        stalled = since >= max(2, self.outer.l2_every // 2) and not any(
            t.status is TrialStatus.KEEP for t in self._trace()[-since:])
        if not (since >= self.outer.l2_every or stalled):
            return
        need = level2_verdict.window_length(self.outer.window)
        left = self.loop.settings.budgets.max_trials - index
        if left < need:  # a candidate could not be judged: no round, said once
            if not self.state.short_noted:
                self.state.short_noted = True
                self._save()
                self._note(index, f"no new round: {left} trial(s) left, a verdict needs a "
                                  f"window of {need}")
            return
        self.round(index, "stall" if since < self.outer.l2_every else "schedule")

    def judge(self, row: MechanismRow, index: int) -> None:
        """The stated test of research/level2/verdict.py over the window's with/without pairs."""
        assert row.activated_at is not None and row.window_end is not None
        run_id = self.loop.run_id
        start, end = row.activated_at, row.window_end
        arms = self.wiring.assignments(row.name)
        scores, sigma, sigma_from = level2_verdict.trial_scores(
            self.loop.store.trials(run_id), self.loop.store.get_run(run_id).noise_sigma)
        with_ = [i for i in arms["with"] if i <= end]
        calls = [c for c in self.loop.store.mechanism_records(run_id)
                 if c.mechanism == row.name and c.trial in set(with_)
                 and c.hook in ACTING_HOOKS]
        changed = len({c.trial for c in calls if c.effective})
        v = level2_verdict.decide(self.loop.settings.search.seed, row.name, start, end,
                                  with_, arms["without"], scores, changed)
        if not v.judged and not row.score.get("extended"):
            row.window_end = end + 2 * (level2_verdict.MIN_PAIRS - len(v.pairs))
            row.score = {"extended": True, "detail": v.reason}
            self.log.put(run_id, row)
            self.wiring.event("window_extended", row, index, f"{v.reason}; window now "
                              f"ends at trial {row.window_end}")
            return
        row.score = {**v.to_json(), "window": [start, end], "sigma": sigma,
                     "sigma_from": sigma_from, "with": with_, "without": arms["without"],
                     "calls_in_with": len(calls), "effective": changed,
                     "extended": bool(row.score.get("extended"))}
        self.state.candidate = ""
        self._save()
        self.wiring.end_trial()
        reason = v.reason
        if v.changed == 0:
            reason = (f"idle: ran {len(calls)} acting call(s) on its WITH trials and changed "
                      f"none" if calls else "never called on its WITH trials") + f"; {v.reason}"
        self.wiring.event("judged", row, index, f"{reason}. Test: {level2_verdict.TEST}; "
                          f"WITH trials {with_}, WITHOUT trials {arms['without']}")
        if v.keep:
            row.status, row.reason = KEPT, reason
            self.log.put(run_id, row)
            self.wiring.event("kept", row, index, reason)
        else:
            self.wiring.deactivate(row, REVERTED, reason, index)
        log.info("level 2 judged", mechanism=row.name, status=row.status, p=v.p,
                 effect=v.effect, pairs=len(v.pairs))

    def round(self, index: int, why: str) -> None:
        self.state.rounds += 1
        self.state.last_round_trial = index
        self._save()
        rows = self._rows()
        trace = self._trace()
        if self.designer is not None:
            job = Designing(self.state.rounds, index, why)
            self.designing = job
            threading.Thread(target=self._design, args=(job, trace, rows), daemon=True,
                             name=f"level2-design-{job.round}").start()
            if job.done.wait(DESIGN_GRACE_SECONDS):  # quick: gated at once, as before
                self.designing = None
                self._designed(index, job)
            return
        row = self._next(index, rows)
        if row is not None:
            self._admit(index, row, f"round {self.state.rounds} ({why})")

    def _design(self, job: Designing, trace: list[TrialRecord],
                rows: dict[str, MechanismRow]) -> None:
        """In the background: the LLM's explore, critique and spec for `job`'s round."""
        assert self.designer is not None
        try:
            d = self.designer.design(job.trial, job.round, trace, list(rows.values()))
            job.row = MechanismRow(unique_name(d.name, set(rows)), "llm", d.source,
                                   field=d.field, description=d.description,
                                   round=job.round, steps=d.steps)
        except (LLMError, LLMUnavailable, LLMBudgetSpent, DesignError) as exc:
            job.error = str(exc)
        except Exception as exc:  # a bug here must not end the run
            log.exception("level 2 design failed")
            job.error = f"{type(exc).__name__}: {exc}"
        finally:
            job.done.set()

    def _designed(self, index: int, job: Designing) -> None:
        """On the coordinator thread, after the design is done: gate it, or say why not."""
        where = f"round {job.round} ({job.why}; designed while trials {job.trial + 1}-" \
                f"{index} ran)"
        if job.row is None:
            self._note(index, f"{where} failed: {job.error}")
            return
        need = level2_verdict.window_length(self.outer.window)
        left = self.loop.settings.budgets.max_trials - index
        if left < need:
            self._note(index, f"{where}: {job.row.name} was designed, but {left} trial(s) "
                              f"are left and a verdict needs a window of {need}")
            return
        self._admit(index, job.row, where)

    def _drop_design(self) -> None:
        job = self.designing
        if job is not None and not job.done.is_set():
            self._note(job.trial, f"round {job.round} was still being designed when the run "
                                  "stopped; dropped")
        self.designing = None

    def _admit(self, index: int, row: MechanismRow, where: str) -> None:
        self.wiring.event("proposed", row, index, f"{where}: {row.description[:500]}")
        admission = self.wiring.admit(row, index)
        if admission.passed:
            row.window_end = index + level2_verdict.window_length(self.outer.window)
            self.log.put(self.loop.run_id, row)
            self.state.candidate = row.name
            self._save()
            self.wiring.put_on_trial(row.name, index + 1)
        log.info("level 2 round", round=row.round, mechanism=row.name,
                 passed=admission.passed, stopped_at=admission.stopped_at)

    def _next(self, index: int, rows: dict[str, MechanismRow]) -> MechanismRow | None:
        """The built-in library's next mechanism (offline rounds)."""
        n = self.state.rounds
        prior = set(self.outer.library_prior_runs)
        # Without memory (an ablation's repeat) earlier runs' verdicts are not read:
        # repeats must not depend on each other or on the order they finished in.
        # Named prior runs: only their verdicts (an earlier ablation's, say).
        # Only runs of the same principal, unless the operator shares memory.
        outcomes = self.log.outcomes(self.loop.run_id, self.loop.memory_owner) \
            if self.loop.settings.proposer.use_memory or prior else []
        if prior:
            outcomes = [o for o in outcomes if o.run_id in prior]
        choice = choose_from_library(set(rows), outcomes, self.loop.settings.task.preset,
                                     self.loop.settings.search.seed, n)
        if choice is None:
            self._note(index, "every built-in mechanism was tried; no new round")
            return None
        name, why = choice
        return MechanismRow(name, "library", library.source(name), round=n,
                            field=f"built-in library ({why})",
                            description=f"built-in {name}: {why}")

    def _note(self, index: int, detail: str) -> None:
        row = MechanismRow("(level 2)", "level2", "", status="none")
        payload: dict[str, Any] = {"trial": index, "detail": detail}
        log.info("level 2", **payload)  # an event of the run, not a fault
        self.wiring.event("round_skipped", row, index, detail)
