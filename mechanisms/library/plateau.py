"""Plateau detection: after `patience` trials without a keep, restart from the incumbent.

A restart here means what the Bilevel paper's code got wrong (REFERENCE.md §2): it
begins from the incumbent *best* configuration, not the last proposal, and moves
further than usual - a few bold moves on several knobs - while the context tells the
proposer that the search has stalled. After a restart it waits `patience` trials again.
"""

from __future__ import annotations

from typing import Any

from mechanisms import sdk


class PlateauRestart:
    def __init__(self, patience: int = 5, scale: float = 0.3, knobs: int = 3) -> None:
        self.patience = patience
        self.scale = scale
        self.knobs = knobs
        self.since_keep = 0
        self.restarts = 0

    def observe(self, trial: Any, state: Any) -> None:
        self.since_keep = 0 if trial["status"] == "keep" else self.since_keep + 1

    def stalled(self) -> bool:
        return self.since_keep >= self.patience

    def context(self, state: Any) -> str:
        if not self.stalled():
            return ""
        return (f"Plateau: no improvement in the last {self.since_keep} trials. Restart from "
                f"the incumbent best (val_bpb {state['best_val_bpb']}) with bolder moves on "
                f"several knobs at once, away from the recently discarded ones.")

    def suggest(self, state: Any) -> list[Any]:
        if not self.stalled():
            return []
        table = sdk.knobs(state)
        names = sorted(k for k in table if k in state["incumbent"])
        rnd = sdk.rng(state, "plateau")
        changes: dict[str, Any] = {}
        for name in rnd.sample(names, min(self.knobs, len(names))):
            knob, current = table[name], state["incumbent"][name]
            if knob["kind"] == "choice":
                others = [c for c in knob["choices"] if c != current]
                new = rnd.choice(others) if others else current
            else:
                direction = rnd.choice((-1.0, 1.0))
                new = sdk.step(knob, current, self.scale, direction)
                if new == current:
                    new = sdk.step(knob, current, self.scale, -direction)
            if new != current:
                changes[name] = new
        self.restarts += 1
        self.since_keep = 0
        if not changes:
            return []
        return [sdk.proposal(changes, f"plateau restart {self.restarts} from the incumbent")]

    def save_state(self) -> Any:
        return {"since_keep": self.since_keep, "restarts": self.restarts}

    def load_state(self, data: Any) -> None:
        self.since_keep = int(data["since_keep"])
        self.restarts = int(data["restarts"])
