"""`local`: a (1+1) local search - it moves one or two knobs of the INCUMBENT by a random
step within their typed ranges. The default proposer without an LLM: it lets the whole
system run without an API key.

A proposal depends only on the seed, the trial index, the retry and the incumbent, so a
restarted run re-proposes exactly what it would have. The random draws are keyed by
knob name (common random numbers): each knob's draw comes from its own generator, and
which knobs move is decided by a per-knob priority, so two runs of the same seed whose
spaces differ by a knob Level 1.5 froze still propose the same moves on every trial that
does not pick the frozen knob - an ablation's arms stay paired.
"""

from __future__ import annotations

import math
import random
from typing import Any

from controller.research.level1.offline import OfflineProposer, StepSettings
from controller.research.level1.proposer import (
    Proposal,
    ProposerContext,
    present_knobs,
    retry_salt,
)
from controller.research.level1.space import Knob
from trainer.knobs import KnobValue


class LocalPerturbation:
    label = "local: (1+1) perturbation of the incumbent (offline, no LLM)"
    fixes_crashes = False
    reads_context = False  # whether mechanism context text reaches it

    def __init__(self, seed: int, settings: StepSettings) -> None:
        self.seed = seed
        self.max_changes = settings.max_changes
        self.step = settings.step

    def propose(self, ctx: ProposerContext) -> Proposal:
        key = f"{self.seed}:{ctx.trial_index}{retry_salt(ctx)}"
        candidates = present_knobs(ctx)
        count = random.Random(key).randint(1, min(self.max_changes, len(candidates)))
        order = sorted(candidates, key=lambda k: random.Random(f"{key}:{k.name}:pick").random())
        changes: dict[str, KnobValue] = {}
        for knob in order:
            if len(changes) == count:
                break
            current = ctx.incumbent[knob.name]
            rng = random.Random(f"{key}:{knob.name}")
            for _ in range(8):  # a draw may land on the current value (e.g. clipped)
                new = _perturb(knob, current, self.step, rng)
                if new != current:
                    changes[knob.name] = new
                    break
        if not changes:
            raise ValueError("no knob could be moved away from its current value")
        text = ", ".join(f"{k} {ctx.incumbent[k]!r} -> {v!r}" for k, v in changes.items())
        return Proposal(changes=changes, description=f"{text} [local]")


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


PROPOSER = OfflineProposer(
    name="local", description="(1+1) perturbation of one or two knobs of the incumbent; "
                              "the default without --provider",
    build=lambda s: LocalPerturbation(s.seed, s.settings))
