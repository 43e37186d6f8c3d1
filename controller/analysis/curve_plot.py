"""The run report's training-curve chart: each trial's reported curve (the candidates'
untrusted progress lines, research/level1/progress.py) as one line, coloured by what
became of the trial, so a reader sees which trials the pruner stopped and where."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt

from controller.analysis.plots import GREEN, GREY, ORANGE, RED, to_base64
from controller.research.task import GPT, Objective
from controller.store.records import TrialRecord, TrialStatus

MAX_LINES = 200  # the most recent trials with curves
_STYLE = {TrialStatus.KEEP: (GREEN, "kept"), TrialStatus.DISCARD: (GREY, "discarded"),
          TrialStatus.PRUNED: (ORANGE, "pruned"), TrialStatus.CRASH: (RED, "crashed")}


def curves_chart(curves: Mapping[int, Sequence[tuple[int, float | None]]],
                 trials: Sequence[TrialRecord], title: str,
                 objective: Objective = GPT) -> str:
    """A base64 PNG, or "" when no trial reported a curve."""
    status = {t.index: t.status for t in trials}
    drawn = sorted(i for i, c in curves.items() if any(v is not None for _, v in c))
    if not drawn:
        return ""
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    labelled: set[str] = set()
    for i in drawn[-MAX_LINES:]:
        colour, label = _STYLE.get(status.get(i) or TrialStatus.CRASH, (GREY, "running"))
        if i == 0:
            colour, label = "black", "baseline"
        steps = [s for s, v in curves[i] if v is not None]
        values = [v for v in (v for _, v in curves[i]) if v is not None]
        ax.plot(steps, values, color=colour, linewidth=1.6 if i == 0 else 0.9,
                alpha=0.9, label=None if label in labelled else label)
        labelled.add(label)
    ax.set_xlabel("step (as reported)")
    ax.set_ylabel(f"{objective.metric} ({objective.better} is better)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return to_base64(fig)
