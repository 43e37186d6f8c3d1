"""The static check of code edits (controller/research/level1/protect.py) is a first filter: each
bypass that once passed it (issue 11 finding 2, issue 19 #2) is rejected now with a reason,
and ordinary edits of the model and loop still pass. The real bound is outside the
candidate (tests/test_trainer_budget.py)."""

from __future__ import annotations

import ast
from collections import Counter
from typing import Any

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


# Issue 19 #2: every binding form is a rebinding, seeding is found however it is reached,
# and imports from `trainer` are compared as (module, name, alias), not by module root.
KNOBS_END = "MAX_LOSS = 20.0  # nats; a training loss above this (or NaN) aborts the run\n"
SEEDED = "torch.manual_seed(SEED)\n"
# (edit, whether the filter before issue 19 let it through)
BINDINGS = {
    "match capture of the budget": (_after(KNOBS_END, "match 75.0:\n    case TIME_BUDGET_SECONDS:"
                                               "\n        pass\n"), True),
    "match capture of harness": (_after(KNOBS_END, "match F:\n    case harness:\n        pass\n"),
                                 True),
    "match capture of clock": (_after(CLOCK, "match None:\n    case clock:\n        pass\n"), True),
    "match star of clock": (_after(CLOCK, "match [1]:\n    case [*clock]:\n        pass\n"), True),
    "match mapping rest of harness": (_after(KNOBS_END, "match {}:\n    case {**harness}:\n"
                                                        "        pass\n"), True),
    "except alias of the budget": (_after(KNOBS_END, "try:\n    raise ValueError\nexcept "
                                                     "ValueError as TIME_BUDGET_SECONDS:\n"
                                                     "    pass\n"), True),
    "global in a function": (_after(KNOBS_END, "def stretch():\n    global TIME_BUDGET_SECONDS\n"
                                               "    TIME_BUDGET_SECONDS = 75.0\n"), False),
    "walrus": (_after(CLOCK, "if (clock := type(clock)(75.0, 0, device)) is None:\n"
                             "    pass\n"), False),
    "for target": (_after(CLOCK, "for clock in [clock]:\n    pass\n"), False),
    "with target": (_after(CLOCK, "import contextlib\nwith contextlib.nullcontext(F) as "
                                  "harness:\n    pass\n"), False),
    "import alias": (_after(KNOBS_END, "import math as harness\n"), False),
}
SEEDINGS = {
    "from-import alias": (_after(SEEDED, "from torch import manual_seed as r\nr(1234)\n"), True),
    "from random import seed": (_after(SEEDED, "from random import seed\nseed(7)\n"), False),
    "from numpy default_rng alias": (_after(SEEDED, "from numpy.random import default_rng as "
                                                    "rng\ng = rng(7)\n"), True),
    "random.Random": (_after(SEEDED, "import random\ng = random.Random(7)\n"), True),
    "numpy RandomState": (_after(SEEDED, "import numpy as np\ng = np.random.RandomState(7)\n"),
                          False),
    "torch Generator": (_after(SEEDED, "g = torch.Generator().manual_seed(7)\n"), False),
    "seeding function aliased": (_after(SEEDED, "r = torch.manual_seed\nr(7)\n"), True),
    "seed by keyword": (_after(SEEDED, "import numpy as np\norder = np.random.permutation(10)\n"
                                       "sampler = dict(seed=1234)\n"), True),
}
IMPORTS = {
    "another trainer module": (_after(KNOBS_END, "from trainer import archive\n"), True),
    "harness under an alias": (_after(
        KNOBS_END, "from trainer import harness as h\nh.TrainingClock.done = lambda s: False\n"),
        True),
    "trainer.harness module": (_after(KNOBS_END, "import trainer.harness\n"), False),
    "star import": (_after(KNOBS_END, "from math import *\n"), True),
}


def _rejected(candidate: str) -> str:
    compile(candidate, "train.py", "exec")  # a valid program: only the filter stops it
    with pytest.raises(ProposalError) as refused:
        TRAINER.check(TRAIN_PY, candidate)
    assert refused.value.knob == "protected"
    return str(refused.value)


@pytest.mark.parametrize("name", sorted(BINDINGS))
def test_deny_every_binding_form_of_a_protected_name_is_a_rebinding(name: str) -> None:
    assert "bind" in _rejected(BINDINGS[name][0])


@pytest.mark.parametrize("name", sorted(SEEDINGS))
def test_deny_seeding_through_aliases_rng_constructors_and_keywords(name: str) -> None:
    assert "seeding" in _rejected(SEEDINGS[name][0])


@pytest.mark.parametrize("name", sorted(IMPORTS))
def test_deny_imports_from_trainer_beyond_the_baselines_own(name: str) -> None:
    assert "import" in _rejected(IMPORTS[name][0])


def _old_bound_names(tree: ast.Module) -> Counter[str]:
    """The binding count before issue 19: names, defs, imports and parameters only."""
    names: Counter[str] = Counter()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            names[node.id] += 1
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names[node.name] += 1
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                names[(alias.asname or alias.name).split(".")[0]] += 1
        elif isinstance(node, ast.arg):
            names[node.arg] += 1
    return names


def _old_seeding(tree: ast.Module) -> Counter[str]:
    """Seeding before issue 19: calls of a few names, by their own spelling only."""
    names = {"manual_seed", "manual_seed_all", "seed", "seed_all", "set_rng_state",
             "set_state", "setstate", "default_rng", "RandomState", "Generator", "fork_rng"}
    return Counter(ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Call) and (
        (isinstance(n.func, ast.Attribute) and n.func.attr in names)
        or (isinstance(n.func, ast.Name) and n.func.id in names)))


def _old_imports(tree: ast.Module) -> Counter[tuple[str, str, str]]:
    """Imports before issue 19: by module only, so any name from a module the baseline
    imports from passes; star imports not looked at."""
    out: Counter[tuple[str, str, str]] = Counter()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update((a.name, "", "") for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out[(node.module, "", "")] += 1
    return +Counter(dict.fromkeys(out, 1))


@pytest.mark.parametrize(("weakened", "old", "cases"), [
    ("_bound_names", _old_bound_names, BINDINGS),
    ("_seeding_refs", _old_seeding, SEEDINGS),
    ("_imports", _old_imports, IMPORTS),
], ids=["bindings", "seeding", "imports"])
def test_the_new_bypasses_pass_the_filter_with_that_rule_as_it_was(
        monkeypatch: pytest.MonkeyPatch, weakened: str, old: Any,
        cases: dict[str, tuple[str, bool]]) -> None:
    """Sensitivity twin of the three tests above: with only that rule put back as it
    was, each edit marked as passing it before does pass the whole filter."""
    from controller.research.level1 import protect

    monkeypatch.setattr(protect, weakened, old)
    passing = [name for name, (_, passed) in cases.items() if passed]
    assert passing
    for name in passing:
        TRAINER.check(TRAIN_PY, cases[name][0])


@pytest.mark.parametrize("edit", [
    (LOOP, "match DEPTH:\n    case 2:\n        pass\n    case depth:\n        pass\n" + LOOP),
    (LOOP, "try:\n    import math\nexcept ImportError as missing:\n    math = None\n" + LOOP),
    ("import torch.nn.functional as F\n", "import torch.nn.functional as F\nfrom torch import nn"
                                          "\n"),
    (LOOP, "seed_note = f'trial seed {SEED}'\n" + LOOP),
])
def test_ordinary_match_try_and_imports_still_pass(edit: tuple[str, str]) -> None:
    search, replace = edit
    assert search in TRAIN_PY
    TRAINER.check(TRAIN_PY, TRAIN_PY.replace(search, replace, 1))
