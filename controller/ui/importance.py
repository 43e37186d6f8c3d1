"""Knob importance for the page: how much of the metric's spread over a run's trials
each knob explains on its own.

The method is a one-way ANOVA per knob, not fANOVA: a knob's values are put in up to
MAX_BINS bins of about equal counts (its categories, for a non-numeric knob), and its
share is omega squared, (SS_between - (k-1) MS_within) / (SS_total + MS_within), the
between-bin variance corrected for what k bins explain by chance. The F test's p-value
says whether the share could be noise. It is honest about what it is: one knob at a time
(interactions and correlated knobs are not separated), over measured trials only
(crashes have no value). fANOVA needs a random forest (scikit-learn), which the project
does not ship; this needs scipy alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

METHOD = ("main effect per knob: omega squared of a one-way ANOVA over binned knob values "
          "(share of the metric's variance one knob explains alone; not fANOVA: "
          "interactions are not separated; crashed trials left out)")
MIN_TRIALS = 8  # measured trials before any share is shown
MAX_BINS = 5
SIGNIFICANT = 0.05  # p-value under which a share is shown as more than noise


def importance(points: Sequence[tuple[Mapping[str, Any], float]],
               knobs: Sequence[str]) -> dict[str, Any]:
    """Each knob's share for `points` ((knob values, metric) of measured trials); knobs
    whose value is unknown for a trial are judged on the trials where it is known."""
    finite = [(c, v) for c, v in points if math.isfinite(v)]
    out: dict[str, Any] = {"method": METHOD, "trials": len(finite), "min_trials": MIN_TRIALS,
                           "knobs": []}
    if len(finite) < MIN_TRIALS:
        out["note"] = (f"too few measured trials to say anything: {len(finite)} "
                       f"(at least {MIN_TRIALS} needed)")
        return out
    rows = []
    for name in knobs:
        known = [(c[name], v) for c, v in finite if c.get(name) is not None]
        rows.append({"name": name, "trials": len(known), **_one(known)})
    rows.sort(key=lambda r: -(r["share"] if r["share"] is not None else -1.0))
    out["knobs"] = rows
    return out


def _one(known: Sequence[tuple[Any, float]]) -> dict[str, Any]:
    """share, p and bins for one knob's (value, metric) pairs, or why there are none."""
    if len(known) < MIN_TRIALS:
        return {"share": None, "p": None, "bins": 0,
                "note": f"value known for {len(known)} trials only"}
    groups = _bins([k for k, _ in known])
    values = np.array([v for _, v in known], dtype=float)
    labels = sorted(set(groups))
    if len(labels) < 2:
        return {"share": None, "p": None, "bins": len(labels), "note": "never varied"}
    members = [values[[g == label for g in groups]] for label in labels]
    total = float(((values - values.mean()) ** 2).sum())
    k, n = len(members), len(values)
    if total <= 0 or n <= k:
        return {"share": 0.0 if total <= 0 else None, "p": None, "bins": k,
                "note": "the metric did not vary" if total <= 0 else "too few trials per bin"}
    between = float(sum(len(m) * (m.mean() - values.mean()) ** 2 for m in members))
    within = (total - between) / (n - k)
    share = max(0.0, (between - (k - 1) * within) / (total + within))
    # No spread within bins: the bins separate the values exactly.
    p = float(stats.f.sf(between / (k - 1) / within, k - 1, n - k)) if within > 0 else 0.0
    return {"share": round(share, 4), "p": round(p, 4), "bins": k,
            "note": "" if p < SIGNIFICANT else "could be noise (p >= 0.05)"}


def _bins(values: Sequence[Any]) -> list[str]:
    """A bin label per value: equal-count bins of a numeric knob (ties in one bin), the
    value itself for anything else."""
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return [repr(v) for v in values]
    distinct = sorted(set(values))
    k = min(len(distinct), MAX_BINS, max(2, len(values) // 3))  # about 3 trials a bin
    ranks = stats.rankdata(values, method="min")  # ties share the lowest rank
    return [str(min(int((r - 1) * k // len(values)), k - 1)) for r in ranks]
