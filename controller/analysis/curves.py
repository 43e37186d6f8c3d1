"""Best-so-far curves: the incumbent's loss after each trial, as in Karpathy's
progress chart, and the normalised area under it (how fast a search improves).

Crashes and discards leave the frontier flat; a run that stopped early is padded with
its last value up to the budget, so runs of one arm line up trial by trial.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from controller.analysis.stats import FloatArray
from controller.store.records import TrialRecord, TrialStatus


@dataclass(frozen=True)
class Point:
    """One finished trial on the progress chart."""

    index: int
    loss: float | None  # None: crashed or invalid
    status: str
    description: str


def points(trials: Sequence[TrialRecord]) -> list[Point]:
    return [Point(t.index, t.val_bpb, t.status.value if t.status else "", t.description)
            for t in trials if t.finished]


def best_so_far(trials: Sequence[TrialRecord], budget: int | None = None) -> list[float]:
    """Incumbent loss after trial 0..budget (kept trials only; greedy or noise rule).
    Before any kept trial the value is nan."""
    kept = {t.index: t.val_bpb for t in trials
            if t.finished and t.status is TrialStatus.KEEP and t.val_bpb is not None}
    last = max((t.index for t in trials if t.finished), default=-1)
    length = (budget if budget is not None else last) + 1
    out: list[float] = []
    best = math.nan
    for i in range(length):
        value = kept.get(i)
        if value is not None:
            best = value  # the keep rule already decided it beats the incumbent
        out.append(best)
    return out


def improvement_curve(trials: Sequence[TrialRecord], budget: int) -> FloatArray:
    """baseline - best_so_far after each trial 0..budget (>= 0 under the greedy rule;
    higher is better)."""
    curve = np.asarray(best_so_far(trials, budget), dtype=np.float64)
    if curve.size == 0 or not math.isfinite(curve[0]):
        return np.full(budget + 1, math.nan)
    return np.asarray(curve[0] - curve, dtype=np.float64)


def normalized_auc(improvement: FloatArray) -> float:
    """Mean improvement over trials 1..T: the area under the improvement curve divided
    by the trial budget, in the loss's units. Rewards finding gains early, not only
    finally."""
    tail = improvement[1:]
    if tail.size == 0 or not np.all(np.isfinite(tail)):
        return math.nan
    return float(tail.mean())
