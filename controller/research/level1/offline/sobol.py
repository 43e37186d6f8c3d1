"""`sobol`: a scrambled Sobol sequence over the typed space - quasi-random points that
cover the space more evenly than independent draws (any 2**m consecutive points put one
point in each of 2**m equal boxes along every knob), the standard design for a global
search that learns nothing from the results.

Each knob is one axis of the unit cube (typed_points.py: log scale for log knobs, powers
of two by exponent, a choice by its share of the axis). Trial i runs point i - 1 of the
sequence that the run's seed scrambles (scipy.stats.qmc.Sobol, Owen scrambling), so a
proposal depends only on the seed, the space and the trial index: a restarted
controller proposes the same point, and there is no state to rebuild. A retry after a
rejection, or a point that lands on the incumbent, takes the same position of another
scramble. The axes follow the space's knob order, so freezing a knob changes every
later point (unlike random_search's per-knob draws). Given only some trials (a portfolio
of proposers), it runs those positions of the sequence. scipy is imported when a
proposal is made, not when the registry lists this module.
"""

from __future__ import annotations

from controller.research.level1.offline import OfflineProposer
from controller.research.level1.proposer import (
    Proposal,
    ProposerContext,
    point_proposal,
    present_knobs,
)
from controller.research.level1.space import Knob
from controller.research.level1.typed_points import derived_seed, from_unit
from trainer.knobs import KnobValue

REDRAWS = 8  # scrambles tried before giving up on a point that differs from the incumbent


def sobol_point(seed: int, scramble: int, knobs: list[Knob], position: int) -> list[float]:
    """Point `position` (0-based) of the Sobol sequence scrambled by (seed, scramble)."""
    from scipy.stats import qmc

    engine = qmc.Sobol(len(knobs), scramble=True,
                       seed=derived_seed("sobol", seed, scramble))
    if position:  # scipy's fast_forward(0) overflows
        engine.fast_forward(position)
    return [float(u) for u in engine.random(1)[0]]


class SobolSequence:
    """Scrambled Sobol quasi-random sampling over the typed knob ranges."""

    tag = "sobol"
    label = "sobol: scrambled Sobol sequence over the typed knobs (offline, no LLM)"
    fixes_crashes = False
    reads_context = False

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def propose(self, ctx: ProposerContext) -> Proposal:
        knobs = present_knobs(ctx)
        position = max(ctx.trial_index - 1, 0)
        point: dict[str, KnobValue] = {}
        for attempt in range(REDRAWS):
            scramble = len(ctx.rejections) * REDRAWS + attempt
            unit = sobol_point(self.seed, scramble, knobs, position)
            point = {k.name: from_unit(k, u) for k, u in zip(knobs, unit, strict=True)}
            if any(point[k] != ctx.incumbent.get(k) for k in point):
                break
        return point_proposal(point, ctx.incumbent, self.tag)


PROPOSER = OfflineProposer(
    name="sobol", description="a scrambled Sobol sequence: quasi-random points that "
                              "cover the typed ranges evenly",
    build=lambda s: SobolSequence(s.seed),
    arm="field: scrambled Sobol quasi-random sampling (offline)")
