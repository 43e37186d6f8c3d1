"""The GPT task's search space: a typed range for every tunable knob of its train.py.

Named knobs get ranges chosen for the model (depth, head size, schedule fractions); any
other knob gets a default by its type and value: a bool is a choice of both, a power of
two a choice of powers of two around it, another positive int [v/4, 4v] and a positive
float [v/10, 10v], both log-scaled. Knobs that define the experiment are left out.
"""

from __future__ import annotations

from controller.research.level1.space import Knob, SearchSpace
from trainer.knobs import SourceConstant, read_constants

# Knobs that define the experiment rather than tune it.
FIXED_KNOBS = frozenset({"TIME_BUDGET_SECONDS", "WARMUP_STEPS", "SEED", "COMPILE", "MAX_LOSS",
                         "SEQ_LEN", "MAX_STEPS"})


def _named(name: str) -> Knob | None:
    table: dict[str, Knob] = {
        "DEPTH": Knob(name, "int", 1, 24),
        "ASPECT_RATIO": Knob(name, "choice", choices=(16, 32, 48, 64, 96, 128)),
        "HEAD_DIM": Knob(name, "choice", choices=(16, 32, 64, 128)),
        "WINDOW_PATTERN": Knob(name, "choice", choices=("L", "SL", "SSL", "SSSL")),
        "ADAM_BETAS": Knob(name, "choice", choices=((0.8, 0.95), (0.9, 0.95), (0.9, 0.99))),
        "WEIGHT_DECAY": Knob(name, "float", 0.0, 1.0),
        "MUON_MOMENTUM": Knob(name, "float", 0.8, 0.99),
        "NS_STEPS": Knob(name, "int", 3, 8),
        "WARMUP_RATIO": Knob(name, "float", 0.0, 0.2),
        "WARMDOWN_RATIO": Knob(name, "float", 0.0, 1.0),
        "FINAL_LR_FRAC": Knob(name, "float", 0.0, 0.5),
        "LOGIT_SOFTCAP": Knob(name, "float", 5.0, 50.0, log=True),
    }
    return table.get(name)


def _default(constant: SourceConstant) -> Knob | None:
    name, value = constant.name, constant.value
    if constant.type is bool:
        return Knob(name, "choice", choices=(True, False))
    if constant.type is int and isinstance(value, int) and value > 0:
        if value & (value - 1) == 0:  # powers of two stay powers of two
            exp = value.bit_length() - 1
            return Knob(name, "choice", choices=tuple(1 << e for e in
                                                      range(max(0, exp - 3), exp + 4)))
        return Knob(name, "int", max(1, value // 4), value * 4, log=True)
    if constant.type is float and isinstance(value, float) and value > 0:
        return Knob(name, "float", value / 10, value * 10, log=True)
    return None


def gpt_search_space(source: str) -> SearchSpace:
    """The typed space of the GPT task's `source` (fixed knobs are left out). Raises
    SyntaxError if it does not parse."""
    knobs = []
    for constant in read_constants(source).values():
        if constant.name in FIXED_KNOBS:
            continue
        knob = _named(constant.name) or _default(constant)
        if knob is not None:
            knobs.append(knob)
    return SearchSpace(tuple(knobs))
