"""Elite crossover: combine the knob values of the best trials into new candidates.

Takes the top-k finished trials of the history and, for each pair of them, a uniform
crossover of their full configurations (each knob from one parent, chosen by a seeded
coin, redrawn when the child copies a parent). Children equal to the incumbent or to a
tried configuration are dropped.
"""

from __future__ import annotations

import itertools
from typing import Any

from mechanisms import sdk


class EliteCrossover:
    def __init__(self, k: int = 3, children: int = 2) -> None:
        self.k = k
        self.children = children

    def suggest(self, state: Any) -> list[Any]:
        elites = sdk.top_trials(state, self.k)
        if len(elites) < 2:
            return []
        rnd = sdk.rng(state, "crossover")
        tried = [sdk.trial_config(state, t) for t in state["history"]]
        out: list[Any] = []
        for a, b in itertools.combinations(elites, 2):
            pa, pb = sdk.trial_config(state, a), sdk.trial_config(state, b)
            for _ in range(8):  # a coin may copy one parent whole; draw again
                child = {k: (pa if rnd.random() < 0.5 else pb).get(k, state["incumbent"][k])
                         for k in sorted(sdk.knobs(state)) if k in state["incumbent"]}
                changes = sdk.changes_from(state, child)
                full = {**state["incumbent"], **changes}
                if changes and full not in tried and all(p["changes"] != changes for p in out):
                    out.append(sdk.proposal(changes, f"crossover of trials {a['index']} and "
                                            f"{b['index']}"))
                    break
            if len(out) == self.children:
                break
        return out
