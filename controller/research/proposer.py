"""Proposers suggest the next change to the incumbent train.py.

`RandomPerturbation` is the offline, seeded, non-LLM BASELINE: it perturbs one or two
knobs at random within their typed ranges. It exists so the whole system runs without an
API key and as the random-search control arm every comparison needs (REFERENCE.md §3).
A proposal depends only on the seed, the trial index and the incumbent, so a restarted
run re-proposes exactly what it would have.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from controller.research.settings import ProposerSettings
from controller.research.space import Knob, KnobValue, SearchSpace
from controller.store.records import TrialRecord


@dataclass(frozen=True)
class Proposal:
    changes: dict[str, KnobValue]
    description: str
    tokens_used: int = 0


@dataclass(frozen=True)
class ProposerContext:
    trial_index: int
    incumbent: dict[str, Any]  # knob values of the incumbent best train.py
    space: SearchSpace  # without the frozen knobs
    history: Sequence[TrialRecord]


class Proposer(Protocol):
    label: str

    def propose(self, ctx: ProposerContext) -> Proposal: ...


class RandomPerturbation:
    label = "random-perturbation (offline baseline, no LLM)"

    def __init__(self, seed: int, settings: ProposerSettings) -> None:
        self.seed = seed
        self.max_changes = settings.max_changes
        self.step = settings.step

    def propose(self, ctx: ProposerContext) -> Proposal:
        rng = random.Random(f"{self.seed}:{ctx.trial_index}")
        candidates = [k for k in ctx.space.knobs if k.name in ctx.incumbent]
        if not candidates:
            raise ValueError("no knob of the search space is present in train.py")
        count = rng.randint(1, min(self.max_changes, len(candidates)))
        changes: dict[str, KnobValue] = {}
        for knob in rng.sample(candidates, len(candidates)):
            if len(changes) == count:
                break
            current = ctx.incumbent[knob.name]
            for _ in range(8):  # a draw may land on the current value (e.g. clipped)
                new = _perturb(knob, current, self.step, rng)
                if new != current:
                    changes[knob.name] = new
                    break
        if not changes:
            raise ValueError("no knob could be moved away from its current value")
        text = ", ".join(f"{k} {ctx.incumbent[k]!r} -> {v!r}" for k, v in changes.items())
        return Proposal(changes=changes, description=f"{text} [random baseline]")


def _perturb(knob: Knob, current: Any, step: float, rng: random.Random) -> KnobValue:
    if knob.kind == "choice":
        others = [c for c in knob.choices if c != current]
        return rng.choice(others) if others else current  # type: ignore[no-any-return]
    value = float(current)
    if knob.power_of_two:
        shift = rng.choice((-1, 1)) * (2 if rng.random() < 0.2 else 1)
        new = value * 2.0**shift
    elif knob.log and value > 0:
        new = value * math.exp(rng.gauss(0.0, step))
    elif knob.kind == "int":
        new = value + rng.choice((-1, 1)) * max(1, round(abs(rng.gauss(0.0, step)) * value))
    else:
        new = value + rng.gauss(0.0, step * (knob.high - knob.low) / 4)
    new = min(max(new, knob.low), knob.high)
    if knob.kind == "int":
        return round(new)
    return float(f"{new:.4g}")


def make_proposer(settings: ProposerSettings, seed: int) -> Proposer:
    if settings.kind == "random":
        return RandomPerturbation(seed, settings)
    raise ValueError(f"unknown proposer {settings.kind!r}")
