"""Proposals are validated before anything runs: params-mode changes against the typed
knob space, code-mode edits for applying, compiling and leaving the trusted harness
alone. Every rejection carries a reason an LLM can act on."""

from __future__ import annotations

import pytest

from controller.research.level1.answers import (
    NO_HYPOTHESIS,
    parse_code_hypothesis,
    parse_params_answer,
)
from controller.research.level1.edits import Edit, apply_edits, parse_edits
from controller.research.level1.protect import TRAINER
from controller.research.level1.space import ProposalError
from controller.research.level1.validate import Validator
from controller.research.tasks.surrogate import SPACE
from tests.test_loop_harness import SyntheticTask
from trainer.presets import PRESETS

TASK = SyntheticTask()
BASE = TASK.baseline_source()
CHECK = Validator(TASK, SPACE)
TRAIN_PY = PRESETS["cpu-tiny"].train_source()


# Params mode


def test_valid_changes_are_written_into_train_py() -> None:
    changes, source = CHECK.params(BASE, {"DEPTH": 10, "MATRIX_LR": 0.05})
    assert changes == {"DEPTH": 10, "MATRIX_LR": 0.05}
    assert "DEPTH = 10" in source and "MATRIX_LR = 0.05" in source


@pytest.mark.parametrize(("changes", "reason"), [
    ({"LEARNING_RATE": 0.1}, "is not a knob of this task"),
    ({"DEPTH": "deep"}, "must be a number"),
    ({"DEPTH": 9.5}, "must be an int"),
    ({"DEPTH": 99}, "outside"),
    ({"ASPECT_RATIO": 48}, "power of two"),
    ({"WINDOW_PATTERN": "XYZ"}, "is not one of"),
    ({"DEPTH": 8}, "changes nothing"),
    ({}, "non-empty"),
    ({"SEED": 7}, "only the seed"),
])
def test_invalid_changes_are_rejected_with_a_reason_and_never_written(
        changes: dict[str, object], reason: str) -> None:
    with pytest.raises(ProposalError, match=reason):
        CHECK.params(BASE, changes)


def test_json_answers_parse_with_or_without_a_fence() -> None:
    fenced = 'Here:\n```json\n{"changes": {"DEPTH": 9}, "hypothesis": "deeper"}\n```'
    answer = parse_params_answer(fenced)
    assert (answer.changes, answer.hypothesis, answer.repaired) == ({"DEPTH": 9}, "deeper",
                                                                    False)
    for broken, why in [("no json here", "no JSON object"), ('{"changes": [1]}', '"changes"'),
                        ('{"changes": {"DEPTH": 9}}', "hypothesis"),
                        ('{"changes": ' + "[" * 40 + "]" * 40 + "}", "nests deeper"),
                        ("{" + " " * 70_000 + "}", "characters")]:
        with pytest.raises(ProposalError, match=why):
            parse_params_answer(broken)


@pytest.mark.parametrize("text", [
    # What small models under llama.cpp answered (#23): prose around the JSON, a trailing
    # comma, single quotes, an answer cut at max_tokens inside the hypothesis.
    'Sure! Here is my proposal: {"changes": {"DEPTH": 9}, "hypothesis": "deeper"} Hope it helps',
    '{"changes": {"DEPTH": 9,}, "hypothesis": "deeper",}',
    "{'changes': {'DEPTH': 9}, 'hypothesis': 'deeper'}",
    '{"changes": {"DEPTH": 9}, "hypothesis": "deeper',
])
def test_answers_real_models_give_are_read_and_marked_repaired(text: str) -> None:
    answer = parse_params_answer(text)
    assert answer.changes == {"DEPTH": 9} and answer.hypothesis == "deeper"
    assert answer.repaired == (not text.startswith("Sure"))


def test_frozen_knobs_are_rejected() -> None:
    frozen = Validator(TASK, SPACE.without(("DEPTH",)))
    with pytest.raises(ProposalError, match="DEPTH: is not a knob"):
        frozen.params(BASE, {"DEPTH": 10})


# Code mode


def test_search_replace_edits_apply_in_order() -> None:
    text = ("HYPOTHESIS: wider\n<<<<<<< SEARCH\nASPECT_RATIO = 64  # model width = DEPTH * "
            "ASPECT_RATIO, rounded up to whole heads\n=======\nASPECT_RATIO = 128\n"
            ">>>>>>> REPLACE\n<<<<<<< SEARCH\nMATRIX_LR = 0.04\n=======\nMATRIX_LR = 0.05\n"
            ">>>>>>> REPLACE\n")
    assert parse_code_hypothesis(text) == "wider"
    assert parse_code_hypothesis("**Hypothesis:** wider\n" + text) == "wider"
    # Edits without the line are still a proposal; the hypothesis is marked missing.
    assert parse_code_hypothesis(text.split("\n", 1)[1]) == NO_HYPOTHESIS
    out = apply_edits(BASE, parse_edits(text))
    assert "ASPECT_RATIO = 128\n" in out and "MATRIX_LR = 0.05\n" in out
    CHECK.code(BASE, out)


@pytest.mark.parametrize(("edit", "reason"), [
    (Edit("MATRIX_LR = 0.4\n", "MATRIX_LR = 0.5\n"), "does not occur"),
    (Edit("_LR = ", "_LR ="), "occurs 4 times"),
    (Edit("   ", "x"), "empty SEARCH"),
])
def test_edits_that_do_not_apply_are_rejected(edit: Edit, reason: str) -> None:
    with pytest.raises(ProposalError, match=reason):
        apply_edits(BASE, [edit])
    with pytest.raises(ProposalError, match="no <<<<<<< SEARCH"):
        parse_edits("HYPOTHESIS: x\nMATRIX_LR = 0.5")


@pytest.mark.parametrize(("search", "replace", "reason"), [
    ("MATRIX_LR = 0.04\n", "MATRIX_LR = (0.04\n", "does not compile"),
    ("MATRIX_LR = 0.04\n", "MATRIX_LR = 0.04  # same\n", "only comments"),
    ("NOISE_STD = 3e-4", "NOISE_STD = 0.0", "NOISE_STD defines the experiment"),
    ("    print(\"---\")\n", "    print(\"--\")\n", "protected function main"),
])
def test_code_that_does_not_compile_or_touches_protected_parts_is_rejected(
        search: str, replace: str, reason: str) -> None:
    candidate = apply_edits(BASE, [Edit(search, replace)])
    with pytest.raises(ProposalError, match=reason):
        CHECK.code(BASE, candidate)


@pytest.mark.parametrize(("search", "replace", "reason"), [
    ("harness.save_model(model, data, device)\n", "pass\n", "removes or changes harness"),
    ("harness.save_model(model, data, device)\n",
     "harness.save_model(model, data, device)\nharness.save_model(model, data, device)\n",
     "adds another protected call"),
    ("data = harness.train_data()\n", "data = harness.train_data()\nharness = None\n",
     "rebinds `harness`"),
    ("from trainer import harness\n", "import trainer.harness as harness\n",
     "removes or changes `from trainer import harness`"),
    ("SEED = harness.seed(42)", "SEED = harness.seed(7)", "removes or changes harness.seed"),
    ("TIME_BUDGET_SECONDS = ", "TIME_BUDGET_SECONDS = 2 * ", "TIME_BUDGET_SECONDS"),
])
def test_the_trusted_harness_calls_in_train_py_are_protected(
        search: str, replace: str, reason: str) -> None:
    assert search in TRAIN_PY
    candidate = TRAIN_PY.replace(search, replace, 1)
    with pytest.raises(ProposalError, match=reason):
        TRAINER.check(TRAIN_PY, candidate)


def test_edits_of_the_model_and_loop_are_allowed_in_the_real_train_py() -> None:
    candidate = TRAIN_PY.replace("return self.c_proj(F.relu(self.c_fc(x)).square())",
                                 "return self.c_proj(F.gelu(self.c_fc(x)))")
    assert candidate != TRAIN_PY
    TRAINER.check(TRAIN_PY, candidate)


def test_a_code_edit_that_only_changes_the_seed_is_rejected() -> None:
    base = BASE + "SEED = 1\n"
    with pytest.raises(ProposalError, match="only change the seed"):
        CHECK.code(base, base.replace("SEED = 1", "SEED = 2"))
