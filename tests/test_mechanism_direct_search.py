"""direct_search (the library's pattern move and mirrored step), in-process on the wire
shapes the sandboxed host passes it: what it suggests after a kept, a discarded and a
crashed step, that it never re-suggests a point that ran, and that it helps a greedy
(1+1) search on a smooth toy objective (the benefit the pattern and mirror rules claim
for any locally smooth objective)."""

from __future__ import annotations

import random
import statistics
from typing import Any

from controller.research.level1.space import Knob, SearchSpace
from mechanisms.library.direct_search import DirectSearch
from mechanisms.wire import LoopState, TrialView
from trainer.knobs import KnobValue

SPACE = SearchSpace((Knob("X", "float", 0.0, 1.0), Knob("Y", "float", 0.0, 1.0),
                     Knob("N", "int", 1, 64, log=True), Knob("MODE", "choice", choices=("a", "b"))))
START: dict[str, KnobValue] = {"X": 0.5, "Y": 0.5, "N": 8, "MODE": "a"}


def _state(history: list[TrialView], incumbent: dict[str, KnobValue]) -> Any:
    best = min(t.val_bpb for t in history if t.status == "keep" and t.val_bpb is not None)
    return LoopState(SPACE, incumbent, best, len(history), 0, tuple(history)).to_json()


def _trial(index: int, config: dict[str, KnobValue], status: str, value: float | None,
           incumbent_value: float | None, before: dict[str, KnobValue]) -> TrialView:
    changes = {k: v for k, v in config.items() if before.get(k) != v}
    return TrialView(index, changes, config, status, value, incumbent_value)  # type: ignore[arg-type]


def test_pattern_move_after_a_keep_mirror_after_a_discard_and_no_revisit() -> None:
    base = _trial(0, START, "keep", 1.0, None, START)
    moved = {**START, "X": 0.6, "MODE": "b"}
    kept = _trial(1, moved, "keep", 0.9, 1.0, START)
    state = _state([base, kept], moved)
    (s,) = DirectSearch().suggest(state)
    assert s["changes"] == {"X": 0.7} and s["description"].startswith("pattern move")
    # The pattern move failed: half a step back, not the pattern again (it ran).
    failed = _trial(2, {**moved, "X": 0.7}, "discard", 0.95, 0.9, moved)
    (back,) = DirectSearch().suggest(_state([base, kept, failed], moved))
    assert back["changes"] == {"X": 0.55} and "discarded trial 2" in back["description"]
    # Once that ran too, nothing is left to suggest.
    half = _trial(3, {**moved, "X": 0.55}, "discard", 0.93, 0.9, moved)
    assert DirectSearch().suggest(_state([base, kept, failed, half], moved)) == [] or \
        DirectSearch().suggest(_state([base, kept, failed, half], moved))[0]["changes"] \
        == {"X": 0.625}
    # A crashed step from the incumbent is reversed, at half its size; choices stay.
    crash = _trial(3, {**moved, "N": 32, "MODE": "a"}, "crash", None, 0.9, moved)
    (m,) = DirectSearch().suggest(_state([base, kept, failed, crash], moved))
    assert m["changes"] == {"N": 4} and "crashed trial 3" in m["description"]


def _value(x: dict[str, Any], rng: random.Random) -> float:
    return (float(x["X"]) - 0.9) ** 2 + (float(x["Y"]) - 0.15) ** 2 + rng.gauss(0, 1e-4)


def _search(seed: int, with_mechanism: bool, trials: int = 30) -> float:
    """Greedy (1+1): a random step on one knob, or on odd trials direct_search's point."""
    rng = random.Random(seed)
    noise = random.Random(seed + 1)
    incumbent: dict[str, Any] = {**START}
    best = _value(incumbent, noise)
    history = [_trial(0, incumbent, "keep", best, None, incumbent)]
    for i in range(1, trials + 1):
        point: dict[str, Any] | None = None
        if with_mechanism and i % 2:
            found = DirectSearch().suggest(_state(history, incumbent))
            point = {**incumbent, **found[0]["changes"]} if found else None
        if point is None:
            k = rng.choice(("X", "Y"))
            point = {**incumbent, k: min(1.0, max(0.0, float(incumbent[k]) + rng.gauss(0, 0.1)))}
        value = _value(point, noise)
        keep = value < best
        history.append(_trial(i, point, "keep" if keep else "discard", value, best, incumbent))
        if keep:
            incumbent, best = point, value
    return (float(incumbent["X"]) - 0.9) ** 2 + (float(incumbent["Y"]) - 0.15) ** 2


def test_it_helps_a_greedy_search_on_a_smooth_objective() -> None:
    plain = [_search(s, False) for s in range(40)]
    helped = [_search(s, True) for s in range(40)]
    assert statistics.median(helped) < 0.5 * statistics.median(plain), (
        statistics.median(helped), statistics.median(plain))
    assert sum(h < p for h, p in zip(helped, plain, strict=True)) >= 28
