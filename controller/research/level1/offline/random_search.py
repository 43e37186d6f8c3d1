"""`random_search`: true random search - every knob drawn independently and uniformly
over its typed range (log-uniform for log knobs, uniform over exponents for powers of
two), ignoring the incumbent. The control arm every comparison needs.

A proposal depends only on the seed, the trial index and the retry; each knob's draw
comes from its own generator keyed by its name (common random numbers), so a knob that
Level 1.5 froze leaves the other knobs' draws unchanged.
"""

from __future__ import annotations

import math
import random

from controller.research.level1.offline import OfflineProposer
from controller.research.level1.proposer import (
    Proposal,
    ProposerContext,
    point_proposal,
    present_knobs,
    retry_salt,
)
from controller.research.level1.space import Knob
from trainer.knobs import KnobValue

REDRAWS = 16  # draws before giving up on a point that differs from the incumbent


class RandomSearch:
    """Uniform random search over the typed ranges; the incumbent only says which knobs
    train.py has (a draw equal to it on every knob is drawn again)."""

    label = "random_search: uniform draws over the typed knob ranges (offline, no LLM)"
    fixes_crashes = False
    reads_context = False

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def propose(self, ctx: ProposerContext) -> Proposal:
        knobs = present_knobs(ctx)
        key = f"random_search:{self.seed}:{ctx.trial_index}{retry_salt(ctx)}"
        for attempt in range(REDRAWS):
            point = {k.name: sample_uniform(k, random.Random(f"{key}:{attempt}:{k.name}"))
                     for k in knobs}
            if any(point[k] != ctx.incumbent[k] for k in point):
                break
        return point_proposal(point, ctx.incumbent, "random_search")


def sample_uniform(knob: Knob, rng: random.Random) -> KnobValue:
    """One uniform draw over the knob's typed range: a choice, a power of two (uniform
    exponent), log-uniform for log knobs, else uniform; ints are rounded."""
    if knob.kind == "choice":
        return rng.choice(knob.choices)  # type: ignore[no-any-return]
    low, high = knob.low, knob.high
    if knob.power_of_two:
        exps = [e for e in range(math.floor(math.log2(max(low, 1))),
                                 math.floor(math.log2(max(high, 1))) + 1) if low <= 2**e <= high]
        return int(2 ** rng.choice(exps))
    if knob.log and low > 0:
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
    else:
        value = rng.uniform(low, high)
    if knob.kind == "int":
        return int(min(max(round(value), math.ceil(low)), math.floor(high)))
    rounded = float(f"{value:.4g}")
    return rounded if low <= rounded <= high else value


PROPOSER = OfflineProposer(
    name="random_search", description="every knob drawn uniformly over its typed range",
    build=lambda s: RandomSearch(s.seed),
    arm="control: random search over the typed ranges", default_arm=True)
