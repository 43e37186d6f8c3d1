"""Points of the typed search space as the offline optimizers see them, and the trials
they learn from, rebuilt from the store.

- internal values: a choice's position, a power of two's exponent, an int, a float (the
  representation Optuna's distributions hold);
- the unit cube: each numeric knob mapped to [0, 1] of its range, log scale for log
  knobs (a power of two's exponent is already a log), ints over [low - 0.5, high + 0.5]
  so each integer gets an equal share when rounded back;
- each trial's full configuration, from the baseline's knobs and each trial's recorded
  changes to its parent.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from controller.research.level1.space import Knob
from controller.store.records import TrialRecord, TrialStatus
from trainer.knobs import KnobValue


def exponents(knob: Knob) -> tuple[int, int]:
    """The exponents of the powers of two inside a power-of-two knob's range."""
    return math.ceil(math.log2(max(knob.low, 1))), math.floor(math.log2(max(knob.high, 1)))


def internal_bounds(knob: Knob) -> tuple[int, int] | tuple[float, float]:
    """A numeric knob's range in internal values: exponents, ints, or floats."""
    if knob.power_of_two:
        return exponents(knob)
    if knob.kind == "int":
        return math.ceil(knob.low), math.floor(knob.high)
    return knob.low, knob.high


def log_scaled(knob: Knob) -> bool:
    """Whether the knob's internal values are searched on a log scale."""
    if knob.power_of_two or knob.kind == "choice":
        return False
    low = internal_bounds(knob)[0]
    return knob.log and (low >= 1 if knob.kind == "int" else low > 0)


def to_internal(knob: Knob, value: Any) -> Any:
    """The value as the distribution holds it, or None when it lies outside the range
    (e.g. a baseline value that is no power of two): such a param is left out."""
    if knob.kind == "choice":
        return knob.choices.index(value) if value in knob.choices else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not knob.low <= value <= knob.high:
        return None
    if knob.power_of_two:
        exp = math.log2(value) if value > 0 else -1.0
        return int(exp) if exp.is_integer() else None
    if knob.kind == "int":
        return int(value) if float(value).is_integer() else None
    return float(value)


def from_internal(knob: Knob, value: Any) -> KnobValue:
    """The knob value an internal value stands for (floats to 4 significant digits, as
    train.py shows them, kept inside the range)."""
    if knob.kind == "choice":
        return knob.choices[int(value)]  # type: ignore[no-any-return]
    if knob.power_of_two:
        return int(2 ** int(value))
    if knob.kind == "int":
        return int(value)
    rounded = float(f"{float(value):.4g}")
    return rounded if knob.low <= rounded <= knob.high else float(value)


def unit_bounds(knob: Knob) -> tuple[float, float]:
    """A numeric knob's range on the unit cube's axis (before scaling to [0, 1])."""
    low, high = internal_bounds(knob)
    if knob.power_of_two or knob.kind == "int":
        low, high = low - 0.5, high + 0.5  # ints: low >= 1 when log-scaled, so low >= 0.5
    if log_scaled(knob):
        return math.log(low), math.log(high)
    return float(low), float(high)


def has_width(knob: Knob) -> bool:
    """Whether a numeric knob has room to move on the unit cube."""
    low, high = unit_bounds(knob)
    return high > low


def to_unit(knob: Knob, value: Any) -> float | None:
    """A numeric knob's value in [0, 1] of its range, or None outside it."""
    inner = to_internal(knob, value)
    if inner is None:
        return None
    low, high = unit_bounds(knob)
    x = math.log(inner) if log_scaled(knob) else float(inner)
    return min(max((x - low) / (high - low), 0.0), 1.0)


def from_unit(knob: Knob, u: float) -> KnobValue:
    """The valid value at position `u` of [0, 1]: a choice by its share of the axis, a
    number by the inverse of to_unit (rounded for ints and powers of two)."""
    u = min(max(u, 0.0), 1.0)
    if knob.kind == "choice":
        return knob.choices[min(int(u * len(knob.choices)), len(knob.choices) - 1)]  # type: ignore[no-any-return]
    low, high = unit_bounds(knob)
    x = low + u * (high - low)
    if log_scaled(knob):
        x = math.exp(x)
    inner_low, inner_high = internal_bounds(knob)
    if knob.power_of_two or knob.kind == "int":
        return from_internal(knob, min(max(round(x), inner_low), inner_high))
    return from_internal(knob, min(max(x, knob.low), knob.high))


def trial_configs(history: Sequence[TrialRecord],
                  baseline: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """Each trial's full knob values: its parent's plus its recorded changes (trial 0 is
    the baseline). Trials whose parent is not known are left out."""
    configs: dict[int, dict[str, Any]] = {}
    for t in sorted(history, key=lambda r: r.index):
        if t.index == 0:
            configs[0] = dict(baseline)
        elif t.parent is not None and t.parent in configs:
            configs[t.index] = {**configs[t.parent], **{k: _tuples(v)
                                                         for k, v in t.changes.items()}}
    return configs


def _tuples(value: Any) -> Any:
    """Stored changes are JSON: a tuple-valued choice comes back as a list."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def derived_seed(*parts: object) -> int:
    """A 32-bit seed from the run's seed and the point being asked."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big")


def tried(t: TrialRecord) -> bool:
    """A trial that ran (an invalid proposal never did)."""
    return t.status is not None and t.job_status != "invalid"


def failed(t: TrialRecord) -> bool:
    """A trial without a finite result: a crash is told to an optimizer as such."""
    return t.status is TrialStatus.CRASH or t.val_bpb is None or not math.isfinite(t.val_bpb)
