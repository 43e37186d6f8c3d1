"""Plateau detection: when the search has gone longer than usual without a keep,
restart from the incumbent with bolder moves.

"Longer than usual" is measured on the run it sees, not fixed: the patience is the
median gap between keeps in the trials learnt so far (at least 2, at most
`max_patience`, `patience` until two gaps are known), so it fires within a short
Level-2 window and waits longer in a search whose keeps come rarely. The trials are
learnt from the history it is shown (a mechanism activated because the search stalled
sees the stall at once) and from observe.

A restart begins from the incumbent *best* configuration, never the last proposal (the
Bilevel paper's code restarted from a discarded proposal), and moves further than
usual - a few bold moves on several knobs - while the context tells the proposer that
the search has stalled. After a restart it waits a patience again.
"""

from __future__ import annotations

import statistics
from typing import Any

from mechanisms import sdk


class PlateauRestart:
    def __init__(self, patience: int = 3, max_patience: int = 4, scale: float = 0.3,
                 knobs: int = 3) -> None:
        self.default_patience = patience
        self.max_patience = max_patience
        self.scale = scale
        self.knobs = knobs
        self.since_keep = 0
        self.restarts = 0
        self.keeps: list[int] = []  # indices of the kept trials learnt, last 20
        self.seen = -1

    def _learn(self, trial: Any) -> None:
        if trial["index"] <= self.seen:
            return
        self.seen = trial["index"]
        if trial["status"] == "keep":
            self.keeps = [*self.keeps, trial["index"]][-20:]
            self.since_keep = 0
        else:
            self.since_keep += 1

    def _catch_up(self, state: Any) -> None:
        for trial in sdk.unseen(state, self.seen):
            self._learn(trial)

    def observe(self, trial: Any, state: Any) -> None:
        self._catch_up(state)
        self._learn(trial)

    def patience(self) -> int:
        gaps = [self.keeps[i + 1] - self.keeps[i] for i in range(len(self.keeps) - 1)]
        if len(gaps) < 2:
            return self.default_patience
        return int(min(max(round(statistics.median(gaps)), 2), self.max_patience))

    def stalled(self) -> bool:
        return self.since_keep >= self.patience()

    def context(self, state: Any) -> str:
        self._catch_up(state)
        if not self.stalled():
            return ""
        return (f"Plateau: no improvement in the last {self.since_keep} trials (keeps came "
                f"every {self.patience()} or so). Restart from the incumbent best (val_bpb "
                f"{state['best_val_bpb']}) with bolder moves on several knobs at once, away "
                "from the recently discarded ones.")

    def suggest(self, state: Any) -> list[Any]:
        self._catch_up(state)
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
        return {"since_keep": self.since_keep, "restarts": self.restarts,
                "keeps": self.keeps, "seen": self.seen}

    def load_state(self, data: Any) -> None:
        self.since_keep = int(data["since_keep"])
        self.restarts = int(data["restarts"])
        self.keeps = [int(k) for k in data.get("keeps", [])]
        self.seen = int(data.get("seen", -1))
