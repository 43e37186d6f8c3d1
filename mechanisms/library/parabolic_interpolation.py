"""Parabolic interpolation: fit a parabola along one knob and try its minimum.

The line-search step of Brent's method (successive parabolic interpolation), on the
trials the run measured. A slice is the set of finished trials that differ from the
incumbent in one numeric knob only - what a local proposer produces all the time. With
three or more distinct values on a slice, the best of them and its nearest neighbour on
each side (or the two nearest, when the best is at an end) determine a parabola in the
knob's normalised coordinate (log scale for log knobs and powers of two); if it opens
upwards, its vertex is the suggestion. A vertex outside the three points is at most one
bracket width beyond the best, as Brent limits extrapolation. Of all knobs, the one
whose parabola predicts the largest gain over its best measured point is suggested;
a value that already ran on its slice is never suggested.

It models nothing about any objective beyond smoothness (near its minimum a smooth
function is a parabola, by Taylor's theorem) and uses only the order-preserving values
the run measured. Stateless: everything comes from the history it is shown, so it acts
from its first call and resumes trivially.
"""

from __future__ import annotations

from typing import Any

from mechanisms import sdk

TOLERANCE = 1e-9  # normalised distance under which two values are the same
MAX_EXTRAPOLATION = 1.0  # a vertex beyond the points: at most this many bracket widths


def _slices(state: Any) -> dict[str, dict[float, list[float]]]:
    """For each numeric knob: normalised value -> the losses measured there on trials
    that agree with the incumbent on every other knob."""
    table = sdk.knobs(state)
    incumbent = state["incumbent"]
    numeric = [k for k, knob in table.items() if knob["kind"] != "choice"
               and k in incumbent and float(knob["high"]) > float(knob["low"])]
    out: dict[str, dict[float, list[float]]] = {}
    for t in state["history"]:
        if not sdk.ran(t) or t["status"] == "crash" or t["val_bpb"] is None:
            continue
        config = sdk.trial_config(state, t)
        differ = [k for k in table if k in incumbent and config.get(k) != incumbent[k]]
        if len(differ) > 1:
            continue
        for name in differ or numeric:  # the incumbent itself lies on every slice
            if name not in numeric:
                continue
            u = round(sdk.unit(table[name], config[name]), 12)
            out.setdefault(name, {}).setdefault(u, []).append(float(t["val_bpb"]))
    return out


def _vertex(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """(u, predicted loss) of the minimum of the parabola through the best point and
    its neighbours, or None if it does not open upwards."""
    points = sorted(points)
    best = min(range(len(points)), key=lambda i: (points[i][1], i))
    if best == 0:
        chosen = points[:3]
    elif best == len(points) - 1:
        chosen = points[-3:]
    else:
        chosen = points[best - 1:best + 2]
    (u1, f1), (u2, f2), (u3, f3) = chosen
    curvature = ((f3 - f2) / (u3 - u2) - (f2 - f1) / (u2 - u1)) / (u3 - u1)
    if curvature <= 0:
        return None
    slope = (f2 - f1) / (u2 - u1) - curvature * (u2 - u1)  # at u1
    u = u1 - slope / (2 * curvature)
    u_best = points[best][0]
    reach = MAX_EXTRAPOLATION * (u3 - u1)
    u = min(max(u, u_best - reach, 0.0), u_best + reach, 1.0)
    predicted = f1 + slope * (u - u1) + curvature * (u - u1) ** 2
    return u, predicted


class ParabolicInterpolation:
    def candidates(self, state: Any) -> list[tuple[float, str, Any, str]]:
        """(predicted gain, knob, value, why) for every knob with a usable parabola,
        the largest gain first."""
        table = sdk.knobs(state)
        found = []
        for name, measured in _slices(state).items():
            if len(measured) < 3:
                continue
            points = [(u, sum(v) / len(v)) for u, v in measured.items()]
            fitted = _vertex(points)
            if fitted is None:
                continue
            u, predicted = fitted
            value = sdk.from_unit(table[name], u)
            u_snapped = sdk.unit(table[name], value)
            if any(abs(u_snapped - seen) < TOLERANCE for seen in measured):
                continue  # ran already (or rounds onto a value that did)
            gain = min(f for _, f in points) - predicted
            if gain <= 0:
                continue
            why = (f"parabolic interpolation on {name} through {len(points)} values: "
                   f"predicted minimum near {value!r}")
            found.append((gain, name, value, why))
        return sorted(found, key=lambda c: (-c[0], c[1]))

    def suggest(self, state: Any) -> list[Any]:
        for _, name, value, why in self.candidates(state):
            if state["incumbent"].get(name) != value:
                return [sdk.proposal({name: value}, why)]
        return []

    def context(self, state: Any) -> str:
        found = self.candidates(state)
        if not found:
            return ""
        _, name, value, why = found[0]
        return f"Parabolic interpolation: {why}; try {name}={value!r}."
