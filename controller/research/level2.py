"""Level 2, the mechanism loop: every `l2_every` trials (sooner when no trial was kept for
half of that), a round designs one new mechanism (research/level2_design.py), passes it
through the gates cheapest first (static -> sandboxed contract test -> activation) and
puts it on trial for `window` trials. One candidate at a time; the mechanisms already
active stay, so the previous set is the fallback.

Scoring (EvoX-style, documented choice): a window's score is its keep rate minus its
crash rate, (keeps - crashes) / trials. At the end of its window a candidate is
- REVERTED as not injected when none of its hook calls in the window was effective
  (REFERENCE.md §2: a mechanism that never changes anything did not run);
- REVERTED as hurting when its window scored below the window of the same length just
  before it by more than one trial's worth (1 / window);
- otherwise KEPT (it stays active; later rounds add to the set).
A candidate that fails at runtime is disabled at once (mechanism_wiring.py) and its
traceback goes to the next round's explore prompt. Keep rates fall as a greedy search
converges, so this comparison is biased against late candidates: it reverts too often
rather than keeping a harmful mechanism; ablations (controller/analysis) make the claim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import structlog

from controller.llm.errors import LLMBudgetSpent, LLMError, LLMUnavailable
from controller.research.level2_design import (
    DesignError,
    LLMDesigner,
    choose_from_library,
    unique_name,
)
from controller.research.mechanism_wiring import MechanismWiring
from controller.store.mechanisms import DISABLED, KEPT, REVERTED, MechanismLog, MechanismRow
from controller.store.records import TrialRecord, TrialStatus
from mechanisms import library

if TYPE_CHECKING:
    from controller.research.loop import InnerLoop

log = structlog.get_logger(__name__)
STATE_KEY = "level2"
METRIC = "keep rate minus crash rate over the window"


@dataclass
class Level2State:
    rounds: int = 0
    last_round_trial: int = 0
    candidate: str = ""  # the mechanism on trial ("" when none)


def window_score(trials: Sequence[TrialRecord]) -> float | None:
    if not trials:
        return None
    keeps = sum(t.status is TrialStatus.KEEP for t in trials)
    crashes = sum(t.status is TrialStatus.CRASH for t in trials)
    return (keeps - crashes) / len(trials)


class MechanismLoop:
    """Runs rounds and judges candidates on the coordinator thread, after a trial."""

    def __init__(self, loop: InnerLoop, wiring: MechanismWiring,
                 designer: LLMDesigner | None) -> None:
        self.loop = loop
        self.wiring = wiring
        self.designer = designer  # None: the built-in library
        self.outer = loop.settings.outer
        self.log = MechanismLog(loop.store)
        raw = self.log.outer_state(loop.run_id, STATE_KEY)
        self.state = Level2State(**raw) if raw else Level2State()

    def attach(self) -> None:
        self.loop.after_trial.append(self.after_trial)

    def _save(self) -> None:
        self.log.set_outer_state(self.loop.run_id, STATE_KEY, asdict(self.state))

    def _rows(self) -> dict[str, MechanismRow]:
        return {r.name: r for r in self.log.mechanisms(self.loop.run_id)}

    def _trace(self) -> list[TrialRecord]:
        return [t for t in self.loop.store.trials(self.loop.run_id)
                if t.finished and t.index > 0]

    def after_trial(self, index: int) -> None:
        if self.state.candidate:
            row = self._rows().get(self.state.candidate)
            if row is None or row.status == DISABLED:
                self.state.candidate = ""  # failed at runtime: already recorded
                self._save()
            elif row.window_end is not None and index >= row.window_end:
                self.judge(row, index)
        if self.state.candidate or (self.outer.max_l2_rounds and
                                    self.state.rounds >= self.outer.max_l2_rounds):
            return
        since = index - self.state.last_round_trial
        stalled = since >= max(2, self.outer.l2_every // 2) and not any(
            t.status is TrialStatus.KEEP for t in self._trace()[-since:])
        if since >= self.outer.l2_every or stalled:
            self.round(index, "stall" if since < self.outer.l2_every else "schedule")

    def judge(self, row: MechanismRow, index: int) -> None:
        assert row.activated_at is not None and row.window_end is not None
        trials = {t.index: t for t in self._trace()}
        start, end = row.activated_at, row.window_end
        width = end - start + 1
        during = [trials[i] for i in range(start, end + 1) if i in trials]
        before = [trials[i] for i in range(max(1, start - width), start) if i in trials]
        calls = [c for c in self.loop.store.mechanism_records(self.loop.run_id)
                 if c.mechanism == row.name and start <= c.trial <= end]
        effective = sum(c.effective for c in calls)
        after_score, before_score = window_score(during), window_score(before)
        row.score = {"metric": METRIC, "window": [start, end], "after": after_score,
                     "before": before_score, "before_window": [max(1, start - width),
                                                               start - 1],
                     "calls": len(calls), "effective": effective}
        self.state.candidate = ""
        self._save()
        if effective == 0:
            reason = (f"not injected: 0 effective calls of {len(calls)} over trials "
                      f"{start}-{end}")
            self.wiring.deactivate(row, REVERTED, reason, index)
        elif (after_score is not None and before_score is not None
              and after_score < before_score - 1 / width):
            reason = (f"hurt: {METRIC} {after_score:.2f} after vs {before_score:.2f} "
                      f"before ({effective} effective calls)")
            self.wiring.deactivate(row, REVERTED, reason, index)
        else:
            row.status, row.reason = KEPT, (
                f"kept: {METRIC} {after_score} after vs {before_score} before; "
                f"{effective} effective calls of {len(calls)}")
            self.log.put(self.loop.run_id, row)
            self.wiring.event("kept", row, index, row.reason)
        log.info("level 2 judged", mechanism=row.name, status=row.status, score=row.score)

    def round(self, index: int, why: str) -> None:
        self.state.rounds += 1
        self.state.last_round_trial = index
        self._save()
        rows = self._rows()
        trace = self._trace()
        row = self._next(index, trace, rows)
        if row is None:
            return
        self.wiring.event("proposed", row, index, f"round {self.state.rounds} ({why}): "
                          f"{row.description[:500]}")
        admission = self.wiring.admit(row, index)
        if admission.passed:
            row.window_end = index + self.outer.window
            self.log.put(self.loop.run_id, row)
            self.state.candidate = row.name
            self._save()
        log.info("level 2 round", round=self.state.rounds, mechanism=row.name,
                 passed=admission.passed, stopped_at=admission.stopped_at)

    def _next(self, index: int, trace: list[TrialRecord],
              rows: dict[str, MechanismRow]) -> MechanismRow | None:
        n = self.state.rounds
        if self.designer is None:
            choice = choose_from_library(trace, set(rows), self.outer.l2_every)
            if choice is None:
                self._note(index, "every built-in mechanism was tried; no new round")
                return None
            name, why = choice
            return MechanismRow(name, "library", library.source(name), round=n,
                                field=f"built-in library (rule: {why})",
                                description=f"built-in {name}: {why}")
        try:
            d = self.designer.design(index, n, trace, list(rows.values()))
        except (LLMError, LLMUnavailable, LLMBudgetSpent, DesignError) as exc:
            self._note(index, f"round {n} failed: {exc}")
            return None
        name = unique_name(d.name, set(rows))
        return MechanismRow(name, "llm", d.source, field=d.field, description=d.description,
                            round=n, steps=d.steps)

    def _note(self, index: int, detail: str) -> None:
        row = MechanismRow("(level 2)", "level2", "", status="none")
        payload: dict[str, Any] = {"trial": index, "detail": detail}
        log.warning("level 2", **payload)
        self.wiring.event("round_skipped", row, index, detail)
