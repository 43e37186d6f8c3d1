"""Multi-scale bandit: UCB1 over step sizes, rewarded by the improvement they bring.

Arms are step scales in normalised knob space. Every trial teaches it, not only its own
suggestions: a trial's step is the largest normalised move among its numeric changes,
credited to the nearest arm, and rewarded by its relative improvement over the
incumbent it was compared against (capped at 1 for a 1 % gain; crashes score 0).
suggest moves one or two numeric knobs of the incumbent by the chosen scale.
"""

from __future__ import annotations

import math
from typing import Any

from mechanisms import sdk

SCALES = (0.02, 0.06, 0.15, 0.35)


class StepBandit:
    def __init__(self) -> None:
        self.pulls = [0 for _ in SCALES]
        self.reward = [0.0 for _ in SCALES]

    def choose(self) -> int:
        for arm, n in enumerate(self.pulls):
            if n == 0:
                return arm
        total = sum(self.pulls)
        ucb = [self.reward[a] / self.pulls[a] + math.sqrt(2 * math.log(total) / self.pulls[a])
               for a in range(len(SCALES))]
        return max(range(len(SCALES)), key=lambda a: (ucb[a], -a))

    def observe(self, trial: Any, state: Any) -> None:
        # `state` is the one the trial was proposed from: its incumbent is the origin.
        table = sdk.knobs(state)
        moves = [abs(sdk.unit(table[k], v) - sdk.unit(table[k], state["incumbent"][k]))
                 for k, v in trial["changes"].items()
                 if k in table and table[k]["kind"] != "choice" and k in state["incumbent"]]
        moves = [m for m in moves if m > 0]
        if not moves:
            return
        arm = min(range(len(SCALES)), key=lambda a: abs(SCALES[a] - max(moves)))
        self.pulls[arm] += 1
        self.reward[arm] += self._reward(trial)

    @staticmethod
    def _reward(trial: Any) -> float:
        before, after = trial["incumbent_val_bpb"], trial["val_bpb"]
        if trial["status"] == "crash" or before is None or after is None or before <= 0:
            return 0.0
        return float(min(max((before - after) / (0.01 * before), 0.0), 1.0))

    def suggest(self, state: Any) -> list[Any]:
        table = sdk.knobs(state)
        numeric = sorted(k for k, knob in table.items()
                         if knob["kind"] != "choice" and k in state["incumbent"])
        if not numeric:
            return []
        arm = self.choose()
        rnd = sdk.rng(state, "bandit")
        changes: dict[str, Any] = {}
        for name in rnd.sample(numeric, min(len(numeric), rnd.randint(1, 2))):
            current = state["incumbent"][name]
            direction = rnd.choice((-1.0, 1.0))
            new = sdk.step(table[name], current, SCALES[arm], direction)
            if new == current:  # at a bound: go the other way
                new = sdk.step(table[name], current, SCALES[arm], -direction)
            if new != current:
                changes[name] = new
        if not changes:
            return []
        return [sdk.proposal(changes, f"bandit step scale {SCALES[arm]} (arm {arm})")]

    def context(self, state: Any) -> str:
        if sum(self.pulls) == 0:
            return ""
        arm = self.choose()
        means = ", ".join(f"{s}: {self.reward[a] / self.pulls[a]:.2f} ({self.pulls[a]})"
                          for a, s in enumerate(SCALES) if self.pulls[a])
        return (f"Step-size bandit: prefer moves of about {SCALES[arm]:.0%} of a knob's "
                f"range (mean reward by scale: {means}).")

    def save_state(self) -> Any:
        return {"pulls": self.pulls, "reward": self.reward}

    def load_state(self, data: Any) -> None:
        self.pulls = [int(n) for n in data["pulls"]]
        self.reward = [float(r) for r in data["reward"]]
