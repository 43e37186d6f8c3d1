"""The static check of code edits (controller/research/level1/protect.py) is a first filter: each
bypass that once passed it (issue 11, finding 2) is rejected now with a reason, and
ordinary edits of the model and loop still pass. The real bound is outside the
candidate (tests/test_trainer_budget.py)."""

from __future__ import annotations

import pytest

from controller.research.level1.protect import SURROGATE, TRAINER
from controller.research.level1.space import ProposalError
from trainer.presets import PRESETS

TRAIN_PY = PRESETS["cpu-tiny"].train_source()
CLOCK = "clock = harness.TrainingClock(TIME_BUDGET_SECONDS, WARMUP_STEPS, device, MAX_STEPS)\n"
LOOP = "while not clock.done():\n"


def _after(anchor: str, lines: str) -> str:
    assert anchor in TRAIN_PY
    return TRAIN_PY.replace(anchor, anchor + lines, 1)


BYPASSES = {
    "clock budget": _after(CLOCK, "clock.budget_seconds = 5 * TIME_BUDGET_SECONDS\n"),
    "clock augmented": _after(CLOCK, "clock.training_seconds -= 100.0\n"),
    "setattr harness": _after(CLOCK, "setattr(harness.TrainingClock, 'done', lambda s: False)\n"),
    "setattr clock": _after(CLOCK, "setattr(clock, 'budget_seconds', 75.0)\n"),
    "globals": _after(CLOCK, "globals()['TIME_BUDGET_SECONDS'] = 75.0\n"),
    "exec": _after(CLOCK, "exec('clock.budget_seconds = 75.0')\n"),
    "eval": _after(CLOCK, "eval(\"clock.__setattr__('budget_seconds', 75.0)\")\n"),
    "compile": _after(CLOCK, "code = compile('x = 1', 'f', 'exec')\n"),
    "importlib alias": _after(
        CLOCK, "import importlib as il\nh = il.import_module('trainer.harness')\n"
               "h.TrainingClock.done = lambda self: self.steps >= 10**9\n"),
    "from trainer.harness": _after(
        CLOCK, "from trainer.harness import TrainingClock\nTrainingClock.done = lambda s: False\n"),
    "replace done": _after(CLOCK, "harness.TrainingClock.done = lambda self: False\n"),
    "alias harness": _after(CLOCK, "h = harness\nh.TrainingClock.done = lambda self: False\n"),
    "subclass clock": _after(
        CLOCK, "class Forever(harness.TrainingClock):\n    def done(self):\n"
               "        return False\n"),
    "rebind clock": _after(CLOCK, "clock = type(clock)(75.0, WARMUP_STEPS, device, MAX_STEPS)\n"),
    "budget rebound": _after("MAX_LOSS = 20.0", "\nTIME_BUDGET_SECONDS = float(75)"),
    "budget rebound late": _after(CLOCK, "TIME_BUDGET_SECONDS = float('75')\n"),
    "hard-coded seed": _after("torch.manual_seed(SEED)\n", "torch.manual_seed(1234)\n"),
    "changed seed": TRAIN_PY.replace("torch.manual_seed(SEED)", "torch.manual_seed(1234)", 1),
    "cuda seed": _after("torch.manual_seed(SEED)\n", "torch.cuda.manual_seed_all(7)\n"),
    "rng state": _after("torch.manual_seed(SEED)\n",
                        "torch.set_rng_state(torch.get_rng_state())\n"),
    "seed rebound": _after("torch.manual_seed(SEED)\n", "SEED = 1234\n"),
    "batch seed": TRAIN_PY.replace("SEQ_LEN, SEED, device)", "SEQ_LEN, 1234, device)", 1),
    "getattr": _after(CLOCK, "getattr(torch, 'manual_seed')(1234)\n"),
    "dunder dict": _after(CLOCK, "vars_ = clock.__dict__\n"),
    "sys modules": _after(CLOCK, "import sys\nsys.modules['trainer.harness'].finish = print\n"),
}


@pytest.mark.parametrize("name", sorted(BYPASSES))
def test_deny_static_bypass_of_the_training_budget_or_seed_is_rejected(name: str) -> None:
    candidate = BYPASSES[name]
    assert candidate != TRAIN_PY
    compile(candidate, "train.py", "exec")  # a valid program: only the filter stops it
    with pytest.raises(ProposalError) as refused:
        TRAINER.check(TRAIN_PY, candidate)
    assert refused.value.knob == "protected" and str(refused.value)


@pytest.mark.parametrize("edit", [
    ("return self.c_proj(F.relu(self.c_fc(x)).square())",
     "return self.c_proj(F.gelu(self.c_fc(x)))"),
    ("import torch.nn.functional as F\n", "import math\n\nimport torch.nn.functional as F\n"),
    (LOOP, "torch.backends.cudnn.benchmark = True\n" + LOOP),
    ("    loss_value = loss.item()\n",
     "    loss_value = loss.item()\n    elapsed = clock.training_seconds\n"),
])
def test_ordinary_edits_of_model_and_loop_still_pass(edit: tuple[str, str]) -> None:
    search, replace = edit
    assert search in TRAIN_PY
    TRAINER.check(TRAIN_PY, TRAIN_PY.replace(search, replace, 1))


def test_the_surrogate_gets_the_same_reflection_rules() -> None:
    from controller.research.tasks.surrogate import SOURCE

    base = SOURCE.read_text()
    forged = base.replace("def main():", "setattr(random.Random, 'gauss', lambda *a: -0.5)\n\n"
                          "def main():", 1)
    with pytest.raises(ProposalError, match="setattr"):
        SURROGATE.check(base, forged)


def test_the_docstring_says_it_is_only_a_filter() -> None:
    from controller.research.level1 import protect

    assert protect.__doc__ is not None and "only a filter" in protect.__doc__
