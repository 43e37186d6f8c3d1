"""Knobs are read without running train.py, rewritten without disturbing the file, and a
candidate's constant can never make the controller compute an unbounded value."""

from __future__ import annotations

import ast
import random

import pytest

from controller.research.level1.offline.random_search import sample_uniform
from controller.research.level1.protect import TRAINER
from controller.research.level1.space import ProposalError
from controller.research.tasks.gpt_ranges import gpt_search_space
from trainer.knobs import MAX_INT_BITS, KnobError, read_constants, read_knobs, write_knobs
from trainer.presets import PRESETS, TRAIN_PY

SOURCE = TRAIN_PY.read_text(encoding="utf-8")

# Each would hold a CPU for seconds to forever, or fill memory, if it were evaluated.
UNBOUNDED = ["9**9**9", "7**7**8", "2<<10**9", '"a"*10**12', "[0]*10**9",
             "((((10**64)**64)**64)**64)**64", "(2**4000)*(2**4000)", "-(9**9**9)",
             "(1, 9**9**9)", "10**10**10 // 3", "2.0**9**9**9"]


def test_reads_the_real_train_py_knobs_with_types_and_comments() -> None:
    constants = read_constants(SOURCE)
    assert constants["DEPTH"].type is int and constants["DEPTH"].value == 8
    assert constants["MATRIX_LR"].type is float
    assert constants["ADAM_BETAS"].value == (0.8, 0.95)
    assert constants["TOTAL_BATCH_SIZE"].value == 2**19  # folded from `2**19`
    assert constants["COMPILE"].type is bool
    assert constants["WINDOW_PATTERN"].type is str
    assert "transformer blocks" in constants["DEPTH"].comment
    assert "dim" not in constants  # lower-case names are not knobs
    assert "SEED" not in constants  # `harness.seed(42)` is a call, not a literal
    assert read_knobs(SOURCE) == {name: c.value for name, c in constants.items()}


def test_only_literals_and_folded_arithmetic_are_knobs() -> None:
    src = ("A = 2**19\nB = -3 * 4 + 1\nC = 1 / 4\n_D = (1, -2.5, 'x')\nE = [1, 2]\n"
           "F = None\nG = f(3)\nH = 1j\nI = 'a' + 'b'\nJ = 10 % 3\nK = (-8) ** 0.5\n"
           "L: float = 1e-3\nM = N = 4\nlower = 1\nO = 1 / 0\nP = 1e308 * 10\n")
    assert read_knobs(src) == {"A": 2**19, "B": -11, "C": 0.25, "_D": (1, -2.5, "x"),
                               "L": 1e-3, "P": float("inf")}


@pytest.mark.parametrize("expression", UNBOUNDED)
def test_deny_an_unbounded_constant_is_refused_before_it_is_computed(expression: str) -> None:
    """The hostile-input rule: folding refuses by the operands' size (never by running
    out of time), so the constant is simply not a knob. bench/knob_parse.py times it."""
    src = f"DEPTH = 8\nUNUSED = {expression}\n"
    assert read_knobs(src) == {"DEPTH": 8}


def test_allow_large_but_bounded_arithmetic_is_still_folded() -> None:
    """Sensitivity twin of the deny test: the bound is the result's size, not a blanket
    refusal of `**` or big numbers."""
    src = f"A = 2**{MAX_INT_BITS - 1}\nB = (10**16)**16\nC = 3**-2\nD = 2**4095 // 2**4000\n"
    assert read_knobs(src) == {"A": 2**(MAX_INT_BITS - 1), "B": 10**256, "C": 3**-2,
                               "D": 2**95}
    assert read_knobs(f"A = 2**{MAX_INT_BITS}\n") == {}  # one bit over
    deep = "X = " + "-" * 40 + "1\n"  # nested deeper than MAX_DEPTH: refused, no recursion
    assert read_knobs(deep) == {}


def test_deny_a_candidate_hides_a_protected_knob_change_in_an_unbounded_expression() -> None:
    """In code mode the controller reads every candidate's knobs: an unbounded constant is
    cheap to refuse, and a protected knob that no longer reads as a literal is a change."""
    TRAINER.check(SOURCE, SOURCE + "\nUNUSED = 9**9**9\n")  # allowed, and cheap
    hidden = SOURCE.replace("TIME_BUDGET_SECONDS = 300.0",
                            "TIME_BUDGET_SECONDS = 300.0 + 0 * 9**9**9")
    assert hidden != SOURCE
    with pytest.raises(ProposalError, match="TIME_BUDGET_SECONDS"):
        TRAINER.check(SOURCE, hidden)


def test_write_round_trips_and_only_touches_the_values() -> None:
    changes = {"DEPTH": 4, "MATRIX_LR": 0.05, "ADAM_BETAS": (0.9, 0.99), "COMPILE": False,
               "WINDOW_PATTERN": "SSSL", "TOTAL_BATCH_SIZE": 2**16}
    new = write_knobs(SOURCE, changes)
    ast.parse(new)
    assert {k: read_knobs(new)[k] for k in changes} == changes
    old_lines, new_lines = SOURCE.splitlines(), new.splitlines()
    assert len(old_lines) == len(new_lines)
    changed = [(a, b) for a, b in zip(old_lines, new_lines, strict=True) if a != b]
    assert len(changed) == len(changes)
    assert "TOTAL_BATCH_SIZE = 2**16  # tokens per optimizer step" in new_lines
    assert "DEPTH = 4  # transformer blocks" in new_lines
    assert write_knobs(new, {k: read_knobs(SOURCE)[k] for k in changes}) == SOURCE


def test_numbers_keep_their_constant_type_where_they_can() -> None:
    assert "MATRIX_LR = 1.0" in write_knobs(SOURCE, {"MATRIX_LR": 1})
    assert read_knobs(write_knobs(SOURCE, {"DEPTH": 6.0}))["DEPTH"] == 6
    # A task's choices may mix ints and floats (DROPOUT = 0 with choices 0, 0.1).
    assert read_knobs(write_knobs("DROPOUT = 0\n", {"DROPOUT": 0.1})) == {"DROPOUT": 0.1}


@pytest.mark.parametrize(("name", "value"), [
    ("DEPTH", "8"), ("DEPTH", True), ("DEPTH", 2**5000), ("MATRIX_LR", "0.1"),
    ("MATRIX_LR", float("nan")), ("MATRIX_LR", 10**400), ("COMPILE", 1),
    ("WINDOW_PATTERN", 3), ("ADAM_BETAS", (0.9,)), ("ADAM_BETAS", ("a", "b")),
])
def test_rejects_values_of_the_wrong_type_naming_the_knob(name: str, value: object) -> None:
    with pytest.raises(KnobError, match=name):
        write_knobs(SOURCE, {name: value})


def test_rejects_unknown_knob() -> None:
    with pytest.raises(KnobError, match="unknown knob 'NOPE'"):
        write_knobs(SOURCE, {"NOPE": 1})


def test_knob_spans_survive_unicode_and_annotations() -> None:
    src = 'NOTE = "é"  # ünïcode\nLR: float = 1e-3  # per step\nX = [1, 2]\nY = f(3)\n'
    assert set(read_knobs(src)) == {"NOTE", "LR"}
    new = write_knobs(src, {"LR": 0.5, "NOTE": "ü"})
    assert new == 'NOTE = "ü"  # ünïcode\nLR: float = 0.5  # per step\nX = [1, 2]\nY = f(3)\n'


def test_gpt_search_space_covers_tunable_knobs_and_contains_current_values() -> None:
    for preset in PRESETS.values():
        source = preset.train_source()
        space = gpt_search_space(source)
        values = read_knobs(source)
        assert "TIME_BUDGET_SECONDS" not in space.names and "SEED" not in space.names
        assert {"DEPTH", "MATRIX_LR", "EMBEDDING_LR", "WARMDOWN_RATIO"} <= set(space.names)
        rng = random.Random(0)
        for knob in space.knobs:
            knob.check(values[knob.name])
            for _ in range(5):
                sampled = sample_uniform(knob, rng)
                knob.check(sampled)
                write_knobs(source, {knob.name: sampled})  # type-correct for the knob


def test_presets_write_valid_train_py() -> None:
    for preset in PRESETS.values():
        source = preset.train_source()
        compile(source, "train.py", "exec")
        assert read_knobs(source)["TIME_BUDGET_SECONDS"] == preset.knobs["TIME_BUDGET_SECONDS"]
