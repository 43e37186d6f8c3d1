"""Pruners: rules that stop a running trial whose reported curve is clearly worse than
the other trials' at the same step (pure logic; watch.py applies them to live trials).

Curves here are in loss units (lower is better: the task's metric, negated when it is
maximised), a None value is a reported NaN/Infinity. Both rules follow Optuna:

- `median` (Optuna's MedianPruner): past `min_step`, once `startup_trials` trials have
  completed, prune a trial whose best value so far is worse than the median of the
  completed trials' best values up to the same step.
- `asha` (Optuna's SuccessiveHalvingPruner, Ray Tune's ASHA): rungs at steps
  r, r*eta, r*eta^2, ... (r = `min_step`, or 1/100 of the first completed trial's last
  step when 0); on reaching a rung a trial goes on only if its value there is in the
  best 1/eta of every trial's value at that rung, once `startup_trials` others reached
  it. Decided once per rung, asynchronously: a trial promoted earlier stays promoted.

A reported non-finite value past `min_step` prunes at once (the candidate says it
diverged). Pruning only ever stops: a curve that lies low (better than the truth)
escapes it and the trusted score still decides; one that lies high prunes itself; one
liar among the references moves a median or a rung's cut-off by one rank at most.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from controller.research.level1.progress import Point

PRUNERS = ("none", "median", "asha")


@dataclass(frozen=True)
class PrunerSettings:
    kind: str = "none"
    startup_trials: int = 3  # completed trials (asha: trials at the rung) before any pruning
    min_step: int = 0  # no pruning below this step (asha: the first rung; 0 = automatic)
    reduction: int = 3  # asha's eta: a rung keeps the best 1/eta


class Pruner(Protocol):
    def decide(self, index: int, curve: Sequence[Point], completed: Mapping[int, Sequence[Point]],
               others: Mapping[int, Sequence[Point]]) -> str:
        """Why trial `index` should stop now ("" to go on). `completed`: the curves of
        trials that finished with a score; `others`: every other trial's curve."""
        ...


def make_pruner(settings: PrunerSettings) -> Pruner | None:
    if settings.kind == "median":
        return MedianPruner(settings)
    if settings.kind == "asha":
        return AshaPruner(settings)
    return None


def best_until(curve: Sequence[Point], step: int) -> float | None:
    """The lowest finite value reported at or before `step`; None if there is none."""
    values = [v for s, v in curve if s <= step and v is not None]
    return min(values) if values else None


def value_at(curve: Sequence[Point], step: int) -> Point | None:
    """The first point at or after `step` (a rung's value), or None if none reached it."""
    return next((p for p in curve if p[0] >= step), None)


def _diverged(curve: Sequence[Point], min_step: int) -> str:
    if curve and curve[-1][1] is None and curve[-1][0] >= min_step:
        return f"reported a non-finite value at step {curve[-1][0]}"
    return ""


class MedianPruner:
    def __init__(self, settings: PrunerSettings) -> None:
        self.settings = settings

    def decide(self, index: int, curve: Sequence[Point], completed: Mapping[int, Sequence[Point]],
               others: Mapping[int, Sequence[Point]]) -> str:
        if not curve or curve[-1][0] < self.settings.min_step:
            return ""
        if why := _diverged(curve, self.settings.min_step):
            return why
        step = curve[-1][0]
        own = best_until(curve, step)
        if own is None or len(completed) < self.settings.startup_trials:
            return ""
        refs = [b for c in completed.values() if (b := best_until(c, step)) is not None]
        if len(refs) < self.settings.startup_trials:
            return ""
        median = statistics.median(refs)
        if own > median:
            return (f"median rule at step {step}: best so far {own:.6g} is worse than the "
                    f"median {median:.6g} of {len(refs)} completed trials")
        return ""


class AshaPruner:
    def __init__(self, settings: PrunerSettings) -> None:
        self.settings = settings
        self._rung: dict[int, int] = {}  # trial -> rungs it has been promoted past

    def first_rung(self, completed: Mapping[int, Sequence[Point]]) -> int | None:
        if self.settings.min_step > 0:
            return self.settings.min_step
        first = next((c for _, c in sorted(completed.items()) if c), None)
        return max(first[-1][0] // 100, 1) if first else None

    def decide(self, index: int, curve: Sequence[Point], completed: Mapping[int, Sequence[Point]],
               others: Mapping[int, Sequence[Point]]) -> str:
        base = self.first_rung(completed)
        if not curve or base is None:
            return ""
        if why := _diverged(curve, base):
            return why
        eta = max(self.settings.reduction, 2)
        while True:
            rung = self._rung.get(index, 0)
            step = base * eta ** rung
            own = value_at(curve, step)
            if own is None:
                return ""
            rivals = [p[1] for c in others.values() if (p := value_at(c, step)) is not None]
            finite = sorted(v for v in rivals if v is not None)
            if len(rivals) < self.settings.startup_trials:
                return ""  # too few trials reached this rung yet: wait, decide later
            if own[1] is None:
                return f"reported a non-finite value at rung step {step}"
            values = sorted([*finite, own[1]])
            cut = values[max(len(values) // eta - 1, 0)]
            if own[1] > cut:
                return (f"asha rung {rung} (step {step}): {own[1]:.6g} is not in the best "
                        f"1/{eta} of {len(values)} trials (cut-off {cut:.6g})")
            self._rung[index] = rung + 1
