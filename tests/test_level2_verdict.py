"""Level 2's verdict as statistics: the coin design and its test (research/level2/verdict.py)
over many simulated runs of a fast in-process (1+1) search on a noisy toy objective, and
the offline library bandit (research/level2/design.py). Pure logic: no sandbox."""

from __future__ import annotations

import math
import random
from collections import Counter

from controller.research.level2 import verdict as v
from controller.research.level2.design import choose_from_library
from controller.store.mechanisms import Outcome
from mechanisms import library

DIMS, SIGMA, TRIALS, RUNS = 4, 0.001, 80, 400
OPTIMUM = (0.3, 0.7, 0.5, 0.2)


def _objective(x: list[float], rng: random.Random) -> float:
    return sum((a - b) ** 2 for a, b in zip(x, OPTIMUM, strict=True)) + rng.gauss(0, SIGMA)


def simulate(seed: int, start: int, kind: str) -> v.MechanismVerdict:
    """One run of a greedy (1+1) search with a candidate on trial from `start`.
    "noop": on its WITH trials it proposes exactly like the proposer (a placebo that
    does change the trial); "good": it moves the incumbent halfway to the optimum."""
    rng = random.Random(seed)
    incumbent = [0.9, 0.1, 0.9, 0.9]
    best = _objective(incumbent, rng)
    end = start + v.window_length(8) - 1
    with_: list[int] = []
    without: list[int] = []
    scores: dict[int, float] = {}
    changed = 0
    for i in range(1, TRIALS + 1):
        on = start <= i <= end
        arm = on and v.with_arm(seed, kind, start, i)
        x = list(incumbent)
        if arm and kind == "good":
            x = [a + 0.5 * (b - a) for a, b in zip(x, OPTIMUM, strict=True)]
        else:
            k = rng.randrange(DIMS)
            x[k] = min(1.0, max(0.0, x[k] + rng.gauss(0, 0.1)))
        changed += arm
        value = _objective(x, rng)
        if on:
            (with_ if arm else without).append(i)
            scores[i] = v.score(value, best, SIGMA)
        if value < best:
            incumbent, best = x, value
    return v.decide(seed, kind, start, end, with_, without, scores, changed)


def _rate(start: int, kind: str) -> float:
    verdicts = [simulate(seed, start, kind) for seed in range(RUNS)]
    assert all(d.judged and len(d.pairs) == 4 for d in verdicts)
    return sum(d.keep for d in verdicts) / RUNS


def test_a_no_op_is_kept_at_the_same_rate_early_and_late_and_a_helpful_one_is_kept() -> None:
    early, late = _rate(3, "noop"), _rate(60, "noop")
    # Binomial sd at p = 0.1 over 400 runs is 0.015; 3 sd bounds.
    assert abs(early - v.ALPHA) < 0.045 and abs(late - v.ALPHA) < 0.045, (early, late)
    assert abs(early - late) < 0.064, (early, late)
    # Halfway to the optimum is a large gain early and a gain of a few sigma late.
    good_early, good_late = _rate(3, "good"), _rate(60, "good")
    assert good_early >= 0.95 and good_late >= 0.85, (good_early, good_late)


def test_the_coin_gives_each_pair_one_with_and_one_without() -> None:
    for seed in range(50):
        arms = [v.with_arm(seed, "m", 7, i) for i in range(7, 27)]
        assert all(a != b for a, b in zip(arms[::2], arms[1::2], strict=True))
    firsts = Counter(v.with_arm(seed, "m", 7, 7) for seed in range(2000))
    assert 900 < firsts[True] < 1100  # a fair coin for which trial of a pair runs WITH


def test_the_test_needs_four_pairs_and_a_change() -> None:
    scores = {i: float(i % 2 == 0) for i in range(1, 9)}  # even trials better
    short = v.decide(0, "m", 1, 6, [2, 4, 6], [1, 3, 5], scores, 3)
    assert not short.judged and "not judged: 3 complete" in short.reason
    idle = v.decide(0, "m", 1, 8, [2, 4, 6, 8], [1, 3, 5, 7], scores, 0)
    assert idle.judged and not idle.keep and "changed none" in idle.reason
    best = v.decide(0, "m", 1, 8, [2, 4, 6, 8], [1, 3, 5, 7], scores, 4)
    assert best.keep and best.p is not None and best.p <= 1 / 16 and best.effect == 1.0
    worst = v.decide(0, "m", 1, 8, [1, 3, 5, 7], [2, 4, 6, 8], scores, 4)
    assert not worst.keep and worst.p is not None and worst.p >= 15 / 16
    # A trial proposed before activation leaves its pair incomplete: dropped, not guessed.
    assert v.complete_pairs(1, 8, [2, 4, 6], [3, 5, 7], scores) == [(4, 3), (6, 5)]
    assert v.score(None, 1.0, 0.1) == -v.CLIP and v.score(0.0, 1.0, 0.1) == math.asinh(10.0)


def _outcome(name: str, status: str, task: str = "surrogate") -> Outcome:
    return Outcome("run-x", task, name, "library", status, None)


def test_library_choice_follows_earlier_verdicts_without_a_fixed_order() -> None:
    fresh = Counter(choose_from_library(set(), [], "surrogate", seed, 1)[0]  # type: ignore[index]
                    for seed in range(600))
    assert "noop" not in fresh and len(fresh) >= 6  # no fixed order favours one
    assert max(fresh.values()) < 3 * min(fresh.values())
    history = [_outcome("step_bandit", "kept")] * 6 + [_outcome("tabu", "reverted")] * 6
    picked = Counter(choose_from_library(set(), history, "surrogate", seed, 1)[0]  # type: ignore[index]
                     for seed in range(600))
    assert picked["step_bandit"] > 3 * fresh["step_bandit"]
    assert picked["tabu"] < fresh["tabu"]
    # Another task's record counts only where this task has none.
    other = [_outcome("tabu", "kept", "cpu-tiny")] * 6
    assert Counter(choose_from_library(set(), other, "surrogate", s, 1)[0]  # type: ignore[index]
                   for s in range(600))["tabu"] > 3 * fresh["tabu"]
    name, why = choose_from_library({"tabu"}, history, "surrogate", 3, 2) or ("", "")
    assert name != "tabu" and why.startswith("bandit: Thompson draw")
    everything = set(library.names())
    assert choose_from_library(everything, history, "surrogate", 3, 2) is None
