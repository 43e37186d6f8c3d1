"""Direct search: repeat a step that paid off, reverse one that did not.

Two classic moves of derivative-free direct search (Hooke and Jeeves' pattern search;
mirrored sampling in evolution strategies), which need nothing but the order of the
results, so they mean the same for any objective that is locally smooth:

- pattern move: the incumbent came from a kept step `d` (from the configuration it was
  proposed from); try `incumbent + d` once more - a line search that keeps going while
  it pays;
- mirrored step: a step `d` from the current incumbent was discarded or crashed; try
  `incumbent - d/2` - if the objective rose along `d`, it likely falls along `-d` (and a
  move into an out-of-memory region is reversed out of it); half the step, as pattern
  search shrinks its step after a failure, since a failed step may have overshot.

Steps are taken on the numeric knobs in normalised space (log scale for log knobs and
powers of two), so they keep the proposer's own scale; a choice knob keeps the
incumbent's value. A point that ran already (or equals the incumbent once snapped to
valid values) is never suggested. Stateless: everything comes from the history it is shown, so it
acts from its first call and resumes trivially.
"""

from __future__ import annotations

from typing import Any

from mechanisms import sdk

TOLERANCE = 1e-9  # normalised distance under which two configurations are the same
MIRROR = 0.5  # the mirrored step, as a share of the failed one


class DirectSearch:
    def _numeric(self, state: Any) -> dict[str, Any]:
        return {n: k for n, k in sdk.knobs(state).items()
                if k["kind"] != "choice" and n in state["incumbent"]}

    def _step(self, state: Any, start: Any, end: Any) -> dict[str, float]:
        """end - start on the numeric knobs, in normalised units."""
        table = self._numeric(state)
        return {n: sdk.unit(k, end[n]) - sdk.unit(k, start[n]) for n, k in table.items()
                if n in start and n in end and end[n] != start[n]}

    def _apply(self, state: Any, steps: dict[str, float], factor: float) -> dict[str, Any]:
        table = self._numeric(state)
        point = dict(state["incumbent"])
        for name, d in steps.items():
            knob = table[name]
            point[name] = sdk.from_unit(knob, sdk.unit(knob, point[name]) + factor * d)
        return point

    def _origin(self, trial: Any, kept: list[Any]) -> Any:
        """The kept trial this one was proposed from: the latest before it with the
        incumbent value it was judged against (else the latest before it)."""
        before = [k for k in kept if k["index"] < trial["index"]]
        same = [k for k in before if k["val_bpb"] == trial["incumbent_val_bpb"]]
        return (same or before or [None])[-1]

    def candidates(self, state: Any) -> list[tuple[dict[str, Any], str]]:
        """(point, why) in order of preference: the pattern move, then the mirrors of
        the failed steps from the incumbent, newest first."""
        history = sorted((t for t in state["history"] if sdk.ran(t)),
                         key=lambda t: t["index"])
        kept = [t for t in history if t["status"] == "keep"]
        incumbent = state["incumbent"]
        home = [k for k in kept
                if sdk.distance(state, sdk.trial_config(state, k), incumbent) < TOLERANCE]
        if not home:
            return []
        base = home[-1]
        out: list[tuple[dict[str, Any], str]] = []
        origin = self._origin(base, kept)
        if origin is not None:
            steps = self._step(state, sdk.trial_config(state, origin),
                               sdk.trial_config(state, base))
            if steps:
                out.append((self._apply(state, steps, 1.0),
                            f"pattern move: repeat the step of kept trial {base['index']}"))
        for t in reversed(history):
            if t["index"] <= base["index"]:
                break
            if t["status"] == "keep" or self._origin(t, kept) is not base:
                continue
            steps = self._step(state, incumbent, sdk.trial_config(state, t))
            if steps:
                out.append((self._apply(state, steps, -MIRROR),
                            f"mirrored step: the opposite of {t['status']}ed trial "
                            f"{t['index']}"))
        return out

    def suggest(self, state: Any) -> list[Any]:
        tried = [sdk.trial_config(state, t) for t in state["history"]]
        for point, why in self.candidates(state):
            changes = sdk.changes_from(state, point)
            if not changes or any(sdk.distance(state, point, c) < TOLERANCE for c in tried):
                continue
            return [sdk.proposal(changes, why)]
        return []

    def context(self, state: Any) -> str:
        found = self.candidates(state)
        if not found:
            return ""
        point, why = found[0]
        moved = ", ".join(f"{k}={v!r}" for k, v in sdk.changes_from(state, point).items())
        return f"Direct search: {why} ({moved or 'no change'})."
