"""The progress line protocol and the pruner rules, as pure logic: what a reported
curve is taken to say, and when the median rule and successive halving stop a trial."""

from __future__ import annotations

from controller.research.level1 import progress
from controller.research.level1.progress import Curve, LineReader, Point, parse_line, summary
from controller.research.level1.pruners import (
    AshaPruner,
    MedianPruner,
    PrunerSettings,
    make_pruner,
)


def _line(step: object, value: object, metric: str = "val_loss") -> bytes:
    return f'bilevel-progress {{"step": {step}, "{metric}": {value}}}'.encode()


def _curve(values: dict[int, float | None]) -> list[Point]:
    return sorted(values.items())


def test_a_progress_line_gives_its_step_and_the_tasks_metric() -> None:
    assert parse_line(_line(100, 1.25), "val_loss") == (100, 1.25)
    assert parse_line(_line(3, "NaN"), "val_loss") == (3, None)  # diverged, by its own word
    assert parse_line(_line(3, "Infinity"), "val_loss") == (3, None)
    assert parse_line(_line(3, 1.0, "acc"), "val_loss") is None  # another metric
    assert parse_line(_line(-1, 1.0), "val_loss") is None
    assert parse_line(_line(1.5, 1.0), "val_loss") is None
    assert parse_line(_line("true", 1.0), "val_loss") is None
    assert parse_line(_line(1, '"low"'), "val_loss") is None
    assert parse_line(b"progress 1 2", "val_loss") is None
    assert parse_line(b'bilevel-progress [1, 2]', "val_loss") is None


def test_lines_split_across_chunks_are_joined_and_other_output_is_ignored() -> None:
    reader = LineReader("val_loss")
    stream = b"epoch 1\n" + _line(1, 2.0) + b"\r\nnoise\n" + _line(2, 1.5) + b"\n"
    got: list[Point] = []
    for i in range(0, len(stream), 7):
        got += reader.feed(stream[i:i + 7])
    assert got == [(1, 2.0), (2, 1.5)]


def test_a_curve_ignores_steps_that_do_not_grow_and_stays_bounded() -> None:
    curve = Curve()
    assert curve.add((5, 1.0)) and not curve.add((5, 0.1)) and not curve.add((4, 0.1))
    for step in range(6, 100_000):
        curve.add((step, 1.0 / step))
    assert len(curve.points) < progress.MAX_POINTS
    shown = curve.shown()
    assert shown[0] == (5, 1.0) and shown[-1] == (99_999, 1.0 / 99_999)  # the whole span
    assert [s for s, _ in shown] == sorted({s for s, _ in shown})
    assert summary(shown, 4)[-1] == shown[-1] and len(summary(shown, 4)) == 4


MEDIAN = PrunerSettings("median", startup_trials=2, min_step=2)


def test_median_rule_prunes_a_trial_worse_than_the_median_at_its_step() -> None:
    rule = MedianPruner(MEDIAN)
    done = {0: _curve({1: 1.0, 2: 0.8, 3: 0.6}), 1: _curve({1: 1.0, 2: 0.7, 3: 0.5})}
    assert rule.decide(2, _curve({1: 1.0, 2: 0.9}), done, done).startswith("median rule")
    assert rule.decide(2, _curve({1: 1.0, 2: 0.74}), done, done) == ""  # median 0.75
    # Its best so far counts, as Optuna's does: a worse latest point is no reason.
    assert rule.decide(2, _curve({1: 0.5, 2: 0.9}), done, done) == ""


def test_median_rule_waits_for_its_warm_up() -> None:
    rule = MedianPruner(MEDIAN)
    done = {0: _curve({1: 0.1, 2: 0.1, 3: 0.1}), 1: _curve({1: 0.1, 2: 0.1})}
    assert rule.decide(2, _curve({1: 9.0}), done, done) == ""  # below min_step
    assert rule.decide(2, _curve({1: 9.0, 2: 9.0}), {0: done[0]}, done) == ""  # one completed
    assert rule.decide(2, _curve({1: 9.0, 2: 9.0}), done, done) != ""
    assert make_pruner(PrunerSettings("none")) is None


def test_a_reported_nan_past_the_warm_up_prunes_the_trial_that_reported_it() -> None:
    rule = MedianPruner(MEDIAN)
    assert rule.decide(2, _curve({1: None}), {}, {}) == ""  # before min_step
    assert "non-finite" in rule.decide(2, _curve({1: 0.1, 2: None}), {}, {})


def test_a_curve_that_lies_low_escapes_the_rule_and_one_that_lies_high_is_pruned() -> None:
    """Pruning only stops: claiming better than the truth avoids it (the trusted score
    then decides), claiming worse only stops the liar itself."""
    rule = MedianPruner(MEDIAN)
    done = {0: _curve({2: 0.8, 4: 0.6}), 1: _curve({2: 0.7, 4: 0.5}),
            2: _curve({2: 0.75, 4: 0.55})}
    assert rule.decide(3, _curve({2: 0.0001, 4: 0.0001}), done, done) == ""
    assert rule.decide(4, _curve({2: 50.0}), done, done) != ""
    # A liar among the completed moves the median by one rank only.
    liar = {**done, 9: _curve({2: -1e9, 4: -1e9})}
    assert rule.decide(5, _curve({2: 0.76}), done, done) != ""
    assert rule.decide(5, _curve({2: 0.74}), liar, liar) != ""  # median 0.725, was 0.75
    assert rule.decide(5, _curve({2: 0.72}), liar, liar) == ""


ASHA = PrunerSettings("asha", startup_trials=2, min_step=10, reduction=3)


def test_asha_keeps_the_best_third_at_each_rung() -> None:
    rule = AshaPruner(ASHA)
    others = {0: _curve({10: 0.5, 30: 0.3}), 1: _curve({10: 0.6, 30: 0.4}),
              2: _curve({10: 0.7})}
    assert rule.decide(5, _curve({9: 0.1}), others, others) == ""  # below the first rung
    # Four values at rung 0 (step 10): the best 4 // 3 = 1 goes on.
    assert rule.decide(5, _curve({10: 0.4}), others, others) == ""
    assert "rung 0" in rule.decide(6, _curve({10: 0.55}), others, others)
    # Trial 5 was promoted at rung 0; at rung 1 (step 30) it is judged again.
    assert "rung 1" in rule.decide(5, _curve({10: 0.4, 30: 0.35}), others, others)


def test_asha_decides_a_rung_once_and_waits_for_its_warm_up() -> None:
    rule = AshaPruner(ASHA)
    one = {0: _curve({10: 0.5})}
    assert rule.decide(5, _curve({10: 0.9}), one, one) == ""  # one rival: too few yet
    two = {0: _curve({10: 0.5}), 1: _curve({10: 0.6})}
    assert rule.decide(5, _curve({10: 0.4}), two, two) == ""
    worse = {**two, 2: _curve({10: 0.1}), 3: _curve({10: 0.1}), 4: _curve({10: 0.1})}
    assert rule.decide(5, _curve({10: 0.4, 11: 0.4}), worse, worse) == ""  # promoted before


def test_asha_finds_its_first_rung_from_the_first_completed_trial() -> None:
    rule = AshaPruner(PrunerSettings("asha", startup_trials=1, min_step=0, reduction=2))
    assert rule.first_rung({}) is None
    done = {0: _curve({s: 1.0 / s for s in range(1, 1001)})}
    assert rule.first_rung(done) == 10
    assert rule.decide(1, _curve({10: 5.0}), done, done).startswith("asha rung 0")
