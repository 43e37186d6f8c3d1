"""Tabu search: reject proposals that revisit a recently tried configuration.

"Revisit" is judged at the proposal's own scale, so it works for any proposer's step
size: a proposal that moves `step` away from the incumbent (`sdk.distance` on typed
knobs: range-normalised, log scale for log knobs, 0/1 for choices) is tabu when a
recently tried configuration lies within `ratio * step` of it - it would mostly re-test
a point already measured. An exact re-run (of a tried configuration or of the
incumbent) is always tabu. A fixed radius could not do this: 0.03 rejected a careful
proposer's every small step and almost never met a bold one's.

The list holds the last `tenure` configurations that ran, learnt from the history the
mechanism is shown (so it acts from its first call, also when activated mid-run) and
from observe. Proposals refused before running are not "tried".
"""

from __future__ import annotations

from typing import Any

from mechanisms import sdk


class TabuSearch:
    def __init__(self, tenure: int = 12, ratio: float = 0.5) -> None:
        self.tenure = tenure
        self.ratio = ratio
        self.tabu: list[dict[str, Any]] = []  # {"index", "config"}, oldest first
        self.seen = -1  # highest trial index learnt from

    def _learn(self, trial: Any, state: Any) -> None:
        if trial["index"] <= self.seen:
            return
        self.seen = trial["index"]
        if sdk.ran(trial):
            self.tabu.append({"index": trial["index"],
                              "config": sdk.trial_config(state, trial)})
            self.tabu = self.tabu[-self.tenure:]

    def _catch_up(self, state: Any) -> None:
        for trial in sdk.unseen(state, self.seen):
            self._learn(trial, state)

    def observe(self, trial: Any, state: Any) -> None:
        self._catch_up(state)
        self._learn(trial, state)

    def filter(self, proposal: Any, state: Any) -> Any:
        self._catch_up(state)
        config = sdk.proposal_config(state, proposal)
        step = sdk.step_size(state, config)
        if step == 0:
            return sdk.reject("tabu: the proposal is the incumbent itself")
        radius = self.ratio * step
        for entry in reversed(self.tabu):
            d = sdk.distance(state, config, entry["config"])
            if d <= radius:
                return sdk.reject(f"tabu: within {d:.3f} of trial {entry['index']}, which "
                                  f"ran already (a revisit at this step: radius {radius:.3f}"
                                  f" = {self.ratio:g} x the step {step:.3f})")
        return sdk.accept()

    def context(self, state: Any) -> str:
        self._catch_up(state)
        if not self.tabu:
            return ""
        shown = ", ".join(str(e["index"]) for e in self.tabu)
        return (f"Tabu: trials {shown} ran recently; a proposal is rejected when it lies "
                f"closer to one of them than {self.ratio:g} x its own distance from the "
                "incumbent, so move somewhere not measured yet.")

    def save_state(self) -> Any:
        return {"tabu": self.tabu, "seen": self.seen}

    def load_state(self, data: Any) -> None:
        self.tabu = list(data["tabu"])[-self.tenure:]
        self.seen = int(data.get("seen", max((e["index"] for e in self.tabu), default=-1)))
