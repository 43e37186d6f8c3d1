"""Knobs are read without running train.py and rewritten without disturbing the file."""

from __future__ import annotations

import ast
import random

import pytest

from trainer.knobs import KnobError, read_knobs, search_space, write_knobs
from trainer.presets import PRESETS, TRAIN_PY

SOURCE = TRAIN_PY.read_text(encoding="utf-8")


def test_reads_the_real_train_py_knobs_with_types_and_comments() -> None:
    knobs = read_knobs(SOURCE)
    assert knobs["DEPTH"].type is int and knobs["DEPTH"].value == 8
    assert knobs["MATRIX_LR"].type is float
    assert knobs["ADAM_BETAS"].value == (0.8, 0.95)
    assert knobs["TOTAL_BATCH_SIZE"].value == 2**19  # folded from `2**19`
    assert knobs["COMPILE"].type is bool
    assert knobs["WINDOW_PATTERN"].type is str
    assert "transformer blocks" in knobs["DEPTH"].comment
    assert "dim" not in knobs  # lower-case names are not knobs


def test_write_round_trips_and_only_touches_the_values() -> None:
    changes = {"DEPTH": 4, "MATRIX_LR": 0.05, "ADAM_BETAS": (0.9, 0.99), "COMPILE": False,
               "WINDOW_PATTERN": "SSSL", "TOTAL_BATCH_SIZE": 2**16}
    new = write_knobs(SOURCE, changes)
    ast.parse(new)
    assert {k: read_knobs(new)[k].value for k in changes} == changes
    old_lines, new_lines = SOURCE.splitlines(), new.splitlines()
    assert len(old_lines) == len(new_lines)
    changed = [(a, b) for a, b in zip(old_lines, new_lines, strict=True) if a != b]
    assert len(changed) == len(changes)
    assert "TOTAL_BATCH_SIZE = 2**16  # tokens per optimizer step" in new_lines
    assert "DEPTH = 4  # transformer blocks" in new_lines
    assert write_knobs(new, {k: read_knobs(SOURCE)[k].value for k in changes}) == SOURCE


def test_float_knob_accepts_an_int_and_writes_a_float() -> None:
    new = write_knobs(SOURCE, {"MATRIX_LR": 1})
    assert read_knobs(new)["MATRIX_LR"].value == 1.0
    assert "MATRIX_LR = 1.0" in new


@pytest.mark.parametrize(("name", "value"), [
    ("DEPTH", "8"), ("DEPTH", 2.5), ("DEPTH", True), ("MATRIX_LR", "0.1"),
    ("MATRIX_LR", float("nan")), ("COMPILE", 1), ("WINDOW_PATTERN", 3),
    ("ADAM_BETAS", (0.9,)), ("ADAM_BETAS", ("a", "b")),
])
def test_rejects_values_of_the_wrong_type_naming_the_knob(name: str, value: object) -> None:
    with pytest.raises(KnobError, match=name):
        write_knobs(SOURCE, {name: value})


def test_rejects_unknown_knob() -> None:
    with pytest.raises(KnobError, match="unknown knob 'NOPE'"):
        write_knobs(SOURCE, {"NOPE": 1})


def test_knob_spans_survive_unicode_and_annotations() -> None:
    src = 'NOTE = "é"  # ünïcode\nLR: float = 1e-3  # per step\nX = [1, 2]\nY = f(3)\n'
    knobs = read_knobs(src)
    assert set(knobs) == {"NOTE", "LR"}
    new = write_knobs(src, {"LR": 0.5, "NOTE": "ü"})
    assert new == 'NOTE = "ü"  # ünïcode\nLR: float = 0.5  # per step\nX = [1, 2]\nY = f(3)\n'


def test_search_space_covers_tunable_knobs_and_contains_current_values() -> None:
    for preset in PRESETS.values():
        source = preset.train_source()
        space = search_space(source)
        knobs = read_knobs(source)
        assert "TIME_BUDGET_SECONDS" not in space and "SEED" not in space
        assert {"DEPTH", "MATRIX_LR", "EMBEDDING_LR", "WARMDOWN_RATIO"} <= set(space)
        rng = random.Random(0)
        for name, rng_ in space.items():
            assert rng_.contains(knobs[name].value), name
            for _ in range(5):
                sampled = rng_.sample(rng)
                assert rng_.contains(sampled)
                perturbed = rng_.perturb(knobs[name].value, rng)
                assert rng_.contains(perturbed)
                write_knobs(source, {name: perturbed})  # type-correct for the knob


def test_presets_write_valid_train_py() -> None:
    for preset in PRESETS.values():
        source = preset.train_source()
        compile(source, "train.py", "exec")
        assert read_knobs(source)["TIME_BUDGET_SECONDS"].value == \
            preset.knobs["TIME_BUDGET_SECONDS"]
