"""Tabu search: reject proposals too close to a recently tried configuration.

Closeness is `sdk.distance` on typed knobs (range-normalised, log scale for log knobs,
0/1 for choices), so "MATRIX_LR 0.040 -> 0.041" is as tabu as re-running 0.040.
The list holds the last `tenure` trials' full configurations, fed by observe.
"""

from __future__ import annotations

from typing import Any

from mechanisms import sdk


class TabuSearch:
    def __init__(self, tenure: int = 12, radius: float = 0.03) -> None:
        self.tenure = tenure
        self.radius = radius
        self.tabu: list[dict[str, Any]] = []  # {"index", "config"}, oldest first

    def observe(self, trial: Any, state: Any) -> None:
        self.tabu.append({"index": trial["index"], "config": sdk.trial_config(state, trial)})
        self.tabu = self.tabu[-self.tenure:]

    def filter(self, proposal: Any, state: Any) -> Any:
        config = sdk.proposal_config(state, proposal)
        for entry in reversed(self.tabu):
            d = sdk.distance(state, config, entry["config"])
            if d <= self.radius:
                return sdk.reject(f"tabu: within {d:.3f} of trial {entry['index']} "
                                  f"(radius {self.radius})")
        return sdk.accept()

    def context(self, state: Any) -> str:
        if not self.tabu:
            return ""
        shown = ", ".join(str(e["index"]) for e in self.tabu)
        return (f"Tabu: configurations of trials {shown} were tried recently; proposals "
                f"within distance {self.radius} of them are rejected, so move further.")

    def save_state(self) -> Any:
        return {"tabu": self.tabu}

    def load_state(self, data: Any) -> None:
        self.tabu = list(data["tabu"])[-self.tenure:]
