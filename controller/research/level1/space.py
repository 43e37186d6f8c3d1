"""The search space: the knobs of a task's editable file that a search may move, each
with its typed range, and the check that a proposal stays within them. (A knob's value
and where it sits in the file are read by trainer/knobs.py.)"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from trainer.knobs import KnobValue


class ProposalError(ValueError):
    """A proposal is outside the search space; `knob` names the offending knob."""

    def __init__(self, knob: str, message: str) -> None:
        super().__init__(f"{knob}: {message}")
        self.knob = knob


@dataclass(frozen=True)
class Knob:
    """One top-level constant of train.py the search may change.

    Numbers live in [low, high]; `log` perturbs them multiplicatively; `power_of_two`
    ints stay powers of two. Choices are a closed set of literal values.
    """

    name: str
    kind: Literal["int", "float", "choice"]
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    power_of_two: bool = False
    choices: tuple[Any, ...] = ()

    def check(self, value: KnobValue) -> None:
        if self.kind == "choice":
            if value not in self.choices:
                raise ProposalError(self.name, f"{value!r} is not one of {self.choices}")
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ProposalError(self.name, f"must be a number, got {value!r}")
        if self.kind == "int" and not isinstance(value, int):
            raise ProposalError(self.name, f"must be an int, got {value!r}")
        if not (self.low <= value <= self.high) or math.isnan(value):
            raise ProposalError(self.name, f"{value!r} is outside [{self.low}, {self.high}]")
        if self.power_of_two and (int(value) & (int(value) - 1)) != 0:
            raise ProposalError(self.name, f"{value!r} is not a power of two")


@dataclass(frozen=True)
class SearchSpace:
    knobs: tuple[Knob, ...]

    def __post_init__(self) -> None:
        names = [k.name for k in self.knobs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate knob names in {names}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.knobs)

    def get(self, name: str) -> Knob:
        for knob in self.knobs:
            if knob.name == name:
                return knob
        raise ProposalError(name, f"is not a knob of this task (knobs: {', '.join(self.names)})")

    def without(self, frozen: tuple[str, ...]) -> SearchSpace:
        for name in frozen:
            self.get(name)
        return SearchSpace(tuple(k for k in self.knobs if k.name not in frozen))

    def check(self, changes: dict[str, KnobValue]) -> None:
        if not changes:
            raise ProposalError("changes", "a proposal must change at least one knob")
        for name, value in changes.items():
            self.get(name).check(value)
