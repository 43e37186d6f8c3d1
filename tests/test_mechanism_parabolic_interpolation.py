"""parabolic_interpolation (the library's line-search step), in-process on the wire shapes
the sandboxed host passes it: the vertex of a parabola through three values of one knob,
what it refuses (a concave slice, fewer than three values, a value that ran, trials that
moved two knobs), and that it helps a greedy (1+1) search on a smooth objective that is
not a parabola."""

from __future__ import annotations

import math
import random
import statistics
from typing import Any

import pytest

from controller.research.level1.space import Knob, SearchSpace
from controller.research.level2.gates import static_check
from mechanisms import library
from mechanisms.library.parabolic_interpolation import ParabolicInterpolation
from mechanisms.wire import LoopState, TrialView
from trainer.knobs import KnobValue

SPACE = SearchSpace((Knob("X", "float", 0.0, 1.0), Knob("Y", "float", 0.0, 1.0),
                     Knob("LR", "float", 1e-4, 1.0, log=True),
                     Knob("MODE", "choice", choices=("a", "b"))))
START: dict[str, KnobValue] = {"X": 0.5, "Y": 0.5, "LR": 1e-2, "MODE": "a"}


def _state(history: list[TrialView], incumbent: dict[str, KnobValue]) -> Any:
    best = min(t.val_bpb for t in history if t.status == "keep" and t.val_bpb is not None)
    return LoopState(SPACE, incumbent, best, len(history), 0, tuple(history)).to_json()


def _trial(index: int, config: dict[str, KnobValue], value: float | None,
           status: str = "discard") -> TrialView:
    changes = {k: v for k, v in config.items() if START.get(k) != v}
    return TrialView(index, changes, config, status, value, 1.0)  # type: ignore[arg-type]


def test_it_suggests_the_vertex_of_the_parabola_along_one_knob() -> None:
    # f(X) = (X - 0.3)**2 at X = 0.5 (the incumbent), 0.7 and 0.9: the vertex is 0.3.
    history = [_trial(0, START, 0.04, "keep"), _trial(1, {**START, "X": 0.7}, 0.16),
               _trial(2, {**START, "X": 0.9}, 0.36)]
    (s,) = ParabolicInterpolation().suggest(_state(history, START))
    # The best (0.5) is at the end of the points: the step is capped at one bracket
    # width (0.4) beyond it, so the vertex 0.3 is reached.
    assert s["changes"] == {"X": pytest.approx(0.3)}
    assert s["description"].startswith("parabolic interpolation on X")
    # Bracketed by a point on each side, the vertex lies between them.
    history.append(_trial(3, {**START, "X": 0.3}, 0.001))
    history.append(_trial(4, {**START, "X": 0.1}, 0.05))
    (s,) = ParabolicInterpolation().suggest(_state(history, START))
    assert 0.1 < float(s["changes"]["X"]) < 0.5 and s["changes"]["X"] != 0.3


def test_log_knobs_are_fitted_on_their_log_scale() -> None:
    # Symmetric in log10(LR) around 1e-3: the vertex is 1e-3, not a linear midpoint.
    history = [_trial(0, START, 1.0, "keep")] + [
        _trial(i, {**START, "LR": lr}, (math.log10(lr) + 3) ** 2)
        for i, lr in enumerate((1e-1, 1e-4), start=1)]
    (s,) = ParabolicInterpolation().suggest(_state(history, START))
    assert s["changes"] == {"LR": pytest.approx(1e-3, rel=1e-3)}


@pytest.mark.parametrize("case", ["concave", "two_values", "ran", "two_knobs", "crash"])
def test_it_suggests_nothing_without_a_usable_parabola(case: str) -> None:
    history = [_trial(0, START, 0.04, "keep")]
    if case == "concave":
        history += [_trial(1, {**START, "X": 0.7}, 0.03), _trial(2, {**START, "X": 0.9}, 0.01)]
    elif case == "two_values":
        history += [_trial(1, {**START, "X": 0.7}, 0.16)]
    elif case == "ran":  # the vertex (0.3) ran already
        history += [_trial(1, {**START, "X": 0.7}, 0.16), _trial(2, {**START, "X": 0.9}, 0.36),
                    _trial(3, {**START, "X": 0.3}, 0.0)]
        history[0] = _trial(0, START, 0.04)  # so the vertex stays 0.3 with 0.3 the best
    elif case == "two_knobs":
        history += [_trial(1, {**START, "X": 0.7, "Y": 0.1}, 0.16),
                    _trial(2, {**START, "X": 0.9, "Y": 0.1}, 0.36)]
    else:
        history += [_trial(1, {**START, "X": 0.7}, None, "crash"),
                    _trial(2, {**START, "X": 0.9}, 0.36)]
    state = _state(history, START) if case != "ran" else LoopState(
        SPACE, START, 0.04, 4, 0, tuple(history)).to_json()
    assert ParabolicInterpolation().suggest(state) == []
    assert ParabolicInterpolation().context(state) == ""


def test_it_is_a_library_mechanism_that_passes_the_static_gate() -> None:
    assert "parabolic_interpolation" in library.names()
    assert library.describe("parabolic_interpolation").startswith("Parabolic interpolation")
    assert static_check(library.source("parabolic_interpolation")).passed


def _value(x: dict[str, Any], rng: random.Random) -> float:
    """Smooth, with its minimum at (0.8, 0.2), and not a parabola: it flattens out."""
    d2 = (float(x["X"]) - 0.8) ** 2 + 2 * (float(x["Y"]) - 0.2) ** 2
    return 1 - math.exp(-d2 / 0.3) + rng.gauss(0, 1e-4)


def _search(seed: int, with_mechanism: bool, trials: int = 30) -> float:
    """Greedy (1+1): a random step on one knob, or on odd trials the mechanism's point."""
    rng = random.Random(seed)
    noise = random.Random(seed + 1)
    incumbent: dict[str, Any] = {**START}
    best = _value(incumbent, noise)
    history = [TrialView(0, {}, incumbent, "keep", best, None)]
    for i in range(1, trials + 1):
        point: dict[str, Any] | None = None
        if with_mechanism and i % 2:
            found = ParabolicInterpolation().suggest(_state(history, incumbent))
            point = {**incumbent, **found[0]["changes"]} if found else None
        if point is None:
            k = rng.choice(("X", "Y"))
            point = {**incumbent, k: min(1.0, max(0.0, float(incumbent[k]) + rng.gauss(0, 0.1)))}
        value = _value(point, noise)
        keep = value < best
        changes = {k: v for k, v in point.items() if incumbent.get(k) != v}
        history.append(TrialView(i, changes, point, "keep" if keep else "discard", value, best))
        if keep:
            incumbent, best = point, value
    return (float(incumbent["X"]) - 0.8) ** 2 + 2 * (float(incumbent["Y"]) - 0.2) ** 2


def test_it_helps_a_greedy_search_on_a_smooth_objective() -> None:
    plain = [_search(s, False) for s in range(40)]
    helped = [_search(s, True) for s in range(40)]
    assert statistics.median(helped) < 0.5 * statistics.median(plain), (
        statistics.median(helped), statistics.median(plain))
    assert sum(h < p for h, p in zip(helped, plain, strict=True)) >= 28
