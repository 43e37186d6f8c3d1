"""Orthogonal exploration: Latin-hypercube designs over the least-tried knobs.

Greedy search keeps nudging the knobs that paid off once and never learns about the
rest. This counts how often each knob was changed (from observe) and suggests a small
Latin-hypercube design over the `width` least-changed numeric knobs: each candidate
sets those knobs to points whose strata cover each knob's range once per design.
Choice knobs among the least tried get a distinct choice per design point.
"""

from __future__ import annotations

from typing import Any

from mechanisms import sdk


class LatinHypercube:
    def __init__(self, width: int = 2, points: int = 3) -> None:
        self.width = width
        self.points = points
        self.changed: dict[str, int] = {}

    def observe(self, trial: Any, state: Any) -> None:
        for name in trial["changes"]:
            self.changed[name] = self.changed.get(name, 0) + 1

    def rarest(self, state: Any) -> list[str]:
        names = sorted(k for k in sdk.knobs(state) if k in state["incumbent"])
        return sorted(names, key=lambda k: (self.changed.get(k, 0), k))[:self.width]

    def suggest(self, state: Any) -> list[Any]:
        table = sdk.knobs(state)
        chosen = self.rarest(state)
        rnd = sdk.rng(state, "lhs")
        columns: dict[str, list[Any]] = {}
        for name in chosen:
            knob = table[name]
            if knob["kind"] == "choice":
                options = [c for c in knob["choices"] if c != state["incumbent"][name]]
                options = options or list(knob["choices"])
                rnd.shuffle(options)
                columns[name] = [options[i % len(options)] for i in range(self.points)]
            else:
                strata = list(range(self.points))
                rnd.shuffle(strata)
                columns[name] = [sdk.from_unit(knob, (s + rnd.random()) / self.points)
                                 for s in strata]
        out = []
        for i in range(self.points):
            changes = sdk.changes_from(state, {n: columns[n][i] for n in chosen})
            if changes:
                out.append(sdk.proposal(changes, f"latin hypercube point {i + 1}/"
                                        f"{self.points} over rarely tried {', '.join(chosen)}"))
        return out

    def context(self, state: Any) -> str:
        rare = self.rarest(state)
        if not rare:
            return ""
        counts = ", ".join(f"{k} ({self.changed.get(k, 0)}x)" for k in rare)
        return f"Rarely explored knobs worth a try: {counts}."

    def save_state(self) -> Any:
        return {"changed": self.changed}

    def load_state(self, data: Any) -> None:
        self.changed = {str(k): int(v) for k, v in data["changed"].items()}
