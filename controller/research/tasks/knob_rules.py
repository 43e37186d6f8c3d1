"""A task's knobs: the editable file's top-level UPPER_CASE literal constants, with
ranges from the manifest's [knobs] table or, where it names none, this default rule:

- `True`/`False`: a choice of the two;
- an int that is a power of two (>= 2): powers of two in [v/8, 8v];
- another int >= 1: [max(1, v//4), 4v], moved multiplicatively;
- a float > 0: [v/10, 10v], moved multiplicatively; the float 0.0: [0, 1];
- anything else (strings, tuples, ints <= 0, negative floats) is fixed unless [knobs]
  gives it a range or `choices`; `NAME = false` in [knobs] fixes any constant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from controller.research.level1.space import Knob, SearchSpace
from controller.research.tasks.errors import TaskError
from trainer import knobs as knob_io

MAX_KNOBS = 64


@dataclass(frozen=True)
class KnobRange:
    """One entry of the manifest's [knobs] table."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    power_of_two: bool = False
    choices: tuple[Any, ...] = ()
    excluded: bool = False  # `NAME = false`: never a knob


def default_knob(name: str, value: Any) -> Knob | None:
    """The default rule's knob for a constant, or None (fixed)."""
    if isinstance(value, bool):
        return Knob(name, "choice", choices=(False, True))
    if isinstance(value, int):
        if value >= 2 and value & (value - 1) == 0:
            return Knob(name, "int", max(1, value // 8), value * 8, log=True, power_of_two=True)
        if value >= 1:
            return Knob(name, "int", max(1, value // 4), value * 4, log=True)
        return None
    if isinstance(value, float):
        if value > 0:
            return Knob(name, "float", value / 10, value * 10, log=True)
        if value == 0.0:
            return Knob(name, "float", 0.0, 1.0)
    return None


def search_space(editable: str, knob_ranges: Sequence[KnobRange], source: str) -> SearchSpace:
    """The typed space of `source` (the task's `editable` file) under the manifest's
    [knobs]; TaskError names the knob whose range does not fit its constant."""
    constants = knob_io.read_knobs(source)
    ranges = {r.name: r for r in knob_ranges}
    for name in ranges:
        if name not in constants:
            raise TaskError(f"knobs.{name}", f"{editable} has no top-level literal "
                                             f"constant {name}")
    knobs: list[Knob] = []
    for name, value in constants.items():
        given = ranges.get(name)
        if given is not None and given.excluded:
            continue
        knob = default_knob(name, value) if given is None else _ranged(given, value)
        if knob is not None:
            knobs.append(knob)
    if len(knobs) > MAX_KNOBS:
        raise TaskError("knobs", f"{editable} has {len(knobs)} knobs, over "
                                 f"{MAX_KNOBS}; fix some with NAME = false")
    return SearchSpace(tuple(knobs))


def _ranged(given: KnobRange, value: Any) -> Knob:
    field = f"knobs.{given.name}"
    if given.choices:
        if value not in given.choices:
            raise TaskError(f"{field}.choices", f"does not contain the default {value!r}")
        return Knob(given.name, "choice", choices=given.choices)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TaskError(field, f"a numeric range for a non-number constant {value!r}; "
                               "give choices")
    low, high = given.low, given.high
    if low is None or high is None:
        raise TaskError(field, "give low and high, or choices")
    if not low <= value <= high:
        raise TaskError(field, f"range [{low}, {high}] does not contain the default "
                               f"{value!r}")
    if isinstance(value, int):
        if low != int(low) or high != int(high):
            raise TaskError(field, f"the constant is an int ({value}); give int bounds")
        if given.power_of_two and value & (value - 1) != 0:
            raise TaskError(field, f"power_of_two, but the default {value} is not one")
        return Knob(given.name, "int", int(low), int(high), log=given.log,
                    power_of_two=given.power_of_two)
    if given.power_of_two:
        raise TaskError(f"{field}.power_of_two", "only for int constants")
    return Knob(given.name, "float", float(low), float(high), log=given.log)
