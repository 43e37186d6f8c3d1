"""A task's knobs: the editable file's top-level UPPER_CASE literal constants and the
names [knobs] lists (a lowercase global, a config key, a command flag: knob_document.py),
with ranges from the manifest's [knobs] table or, where it gives none, this default rule:

- `True`/`False`: a choice of the two;
- an int that is a power of two (>= 2): powers of two in [v/8, 8v];
- another int >= 1: [max(1, v//4), 4v], moved multiplicatively;
- a float > 0: [v/10, 10v], moved multiplicatively; the float 0.0: [0, 1];
- anything else (strings, tuples, ints <= 0, negative floats) is fixed unless [knobs]
  gives it a range or `choices`; `NAME = false` in [knobs] fixes any constant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.research.level1.space import Knob, SearchSpace
from controller.research.tasks import config_knobs
from controller.research.tasks.errors import TaskError
from controller.research.tasks.knob_document import KnobDocument

MAX_KNOBS = 64
_KNOB = {"low", "high", "log", "power_of_two", "choices"}


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
    default: Any = None  # a flag's baseline value when the script's argparse has none


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


def parse_knob(name: str, raw: Any, document: KnobDocument) -> KnobRange:
    """One [knobs] entry: `{low, high[, log, power_of_two]}`, `{choices = [...]}`,
    `true` (a knob by the default rule) or `false` (never a knob); a flag may add
    `default`. TaskError names the key."""
    field = f"knobs.{name}"
    if document.kind in ("python", "flags") and not name.isidentifier():
        raise TaskError(field, f"must be a name of {document.path} (an identifier)")
    if document.kind not in ("python", "flags") and not config_knobs.valid_path(name):
        raise TaskError(field, f"must be a key of {document.path}, dotted for nested keys "
                               "(e.g. \"optimizer.lr\")")
    if isinstance(raw, bool):
        return KnobRange(name, excluded=not raw)
    if not isinstance(raw, dict):
        raise TaskError(field, f"must be {{low, high[, log, power_of_two]}}, {{choices = "
                               f"[...]}}, true or false, got {raw!r}")
    allowed = _KNOB | ({"default"} if document.kind == "flags" else set())
    for key in raw:
        if key not in allowed:
            raise TaskError(f"{field}.{key}", f"unknown key; allowed: {', '.join(sorted(allowed))}")
    default = raw.get("default")
    if default is not None and (not isinstance(default, bool | int | float | str) or (
            isinstance(default, float) and not math.isfinite(default))):
        raise TaskError(f"{field}.default", f"must be a number, bool or string, got {default!r}")
    rest = {k: v for k, v in raw.items() if k != "default"}
    if not rest:
        return KnobRange(name, default=default)
    if "choices" in rest:
        choices = rest["choices"]
        if set(rest) != {"choices"} or not isinstance(choices, list) or len(choices) < 2 or \
                not all(isinstance(c, str | int | float | bool) for c in choices):
            raise TaskError(f"{field}.choices", "must be alone, a list of 2 or more literals")
        return KnobRange(name, choices=tuple(choices), default=default)
    bounds = []
    for key in ("low", "high"):
        value = rest.get(key)
        if value is None:
            raise TaskError(f"{field}.{key}", "is required (or give choices)")
        if isinstance(value, bool) or not isinstance(value, int | float) or \
                not math.isfinite(value):
            raise TaskError(f"{field}.{key}", f"must be a finite number, got {value!r}")
        bounds.append(float(value))
    low, high = bounds
    if not low < high:
        raise TaskError(f"{field}.high", f"must be above low ({low}), got {high}")
    flags = {k: rest.get(k, False) for k in ("log", "power_of_two")}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise TaskError(f"{field}.{key}", f"must be true or false, got {value!r}")
    if flags["log"] and low <= 0:
        raise TaskError(f"{field}.low", f"a log range needs low > 0, got {low}")
    if flags["power_of_two"] and low < 1:
        raise TaskError(f"{field}.low", f"a power-of-two range needs low >= 1, got {low}")
    return KnobRange(name, low, high, flags["log"], flags["power_of_two"], default=default)


def search_space(document: KnobDocument, knob_ranges: Sequence[KnobRange],
                 values: Mapping[str, Any]) -> SearchSpace:
    """The typed space of a task's knobs (`values`: the baseline's, by name) under the
    manifest's [knobs]; TaskError names the knob whose range does not fit its value,
    and refuses a task with no knob at all, saying what was looked for."""
    ranges = {r.name: r for r in knob_ranges}
    for name, entry in ranges.items():
        if name not in values and not entry.excluded:
            raise TaskError(f"knobs.{name}", f"is not a knob: there is no "
                                             f"{document.origin(name)}")
    knobs: list[Knob] = []
    for name, value in values.items():
        given = ranges.get(name)
        if given is not None and given.excluded:
            continue
        if given is None or (given.low is None and not given.choices):
            knob = default_knob(name, value)
            if knob is None and given is not None:
                raise TaskError(f"knobs.{name}", f"has no default range for {value!r}; "
                                                 "give low and high, or choices")
        else:
            knob = _ranged(given, value)
        if knob is not None:
            knobs.append(knob)
    if len(knobs) > MAX_KNOBS:
        raise TaskError("knobs", f"{document.path} has {len(knobs)} knobs, over "
                                 f"{MAX_KNOBS}; fix some with NAME = false")
    if not knobs:
        raise TaskError("knobs", f"the task has no knob to search: looked for "
                                 f"{document.looked_for()}; found none with a range")
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


def describe_knobs(document: KnobDocument, space: SearchSpace) -> list[str]:
    """One line per knob: its range and where it comes from, for the user to check
    before a run spends time on it."""
    lines = []
    for knob in space.knobs:
        if knob.kind == "choice":
            what = "one of " + ", ".join(repr(c) for c in knob.choices)
        else:
            what = f"{knob.kind} in [{knob.low:g}, {knob.high:g}]" + (" log" if knob.log else "")
        lines.append(f"{knob.name}: {what}; {document.origin(knob.name)}")
    return lines
