"""Elite crossover: combine two good trials from different lineages into new candidates.

The loop always proposes from the incumbent, so the kept trials form ONE chain: each
is the previous one plus a change. Crossing two of them only re-mixes a chain with
itself (partial reverts of its own steps). Here a pair of parents must be distinct:
not both kept (at least one is a side branch - a discarded trial), configurations that
differ on at least two knobs (else every child copies a parent). Among the best `k`
finished trials (never the worse half), the best such pairs are crossed uniformly (each
differing knob from one parent, by a seeded coin, redrawn when the child copies a
parent); children equal to the incumbent or to a tried configuration are dropped.
Without such a pair it suggests nothing (a report shows it ran with nothing to do)
rather than re-mix a chain.
"""

from __future__ import annotations

import itertools
from typing import Any

from mechanisms import sdk


class EliteCrossover:
    def __init__(self, k: int = 6, children: int = 2) -> None:
        self.k = k
        self.children = children

    def pairs(self, state: Any) -> list[tuple[Any, Any]]:
        """Distinct elite pairs, in the order of the elites' ranks (best first)."""
        done = [t for t in sdk.top_trials(state, len(state["history"])) if sdk.ran(t)]
        elites = done[:max(2, min(self.k, len(done) // 2))]  # never the worse half
        names = [k for k in sorted(sdk.knobs(state)) if k in state["incumbent"]]
        out = []
        for a, b in itertools.combinations(elites, 2):
            if a["status"] == "keep" and b["status"] == "keep":
                continue  # one chain
            pa, pb = sdk.trial_config(state, a), sdk.trial_config(state, b)
            differ = [k for k in names if pa.get(k, state["incumbent"][k]) !=
                      pb.get(k, state["incumbent"][k])]
            if len(differ) >= 2:
                out.append((a, b))
        return out

    def suggest(self, state: Any) -> list[Any]:
        rnd = sdk.rng(state, "crossover")
        tried = [sdk.trial_config(state, t) for t in state["history"]]
        names = [k for k in sorted(sdk.knobs(state)) if k in state["incumbent"]]
        out: list[Any] = []
        for a, b in self.pairs(state):
            pa, pb = sdk.trial_config(state, a), sdk.trial_config(state, b)
            for _ in range(8):  # a coin may copy one parent whole; draw again
                child = {k: (pa if rnd.random() < 0.5 else pb).get(k, state["incumbent"][k])
                         for k in names}
                changes = sdk.changes_from(state, child)
                full = {**state["incumbent"], **changes}
                if changes and full not in tried and \
                        all(p["changes"] != changes for p in out):
                    out.append(sdk.proposal(changes, f"crossover of trials {a['index']} "
                                            f"({a['status']}) and {b['index']} "
                                            f"({b['status']})"))
                    break
            if len(out) == self.children:
                break
        return out

    def context(self, state: Any) -> str:
        pairs = self.pairs(state)
        if not pairs:
            return ""
        a, b = pairs[0]
        return (f"Elite crossover: trials {a['index']} and {b['index']} are good and "
                "differ on several knobs; a mix of their values may beat both.")
