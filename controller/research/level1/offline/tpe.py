"""`tpe`: Optuna's TPESampler (its defaults: 10 random start-up trials, then the
tree-structured Parzen estimator) as an ask-and-tell proposer over the typed space.

Each knob maps to an Optuna distribution (log-scaled floats and ints, powers of two as
an integer exponent, choices as a categorical over their positions). Stateless: every
proposal is a fresh study told every finished trial of the run (a crash as an
infeasible trial), with the sampler seeded by (seed, trial index, retry), so a restarted
controller asks exactly the same next point, whatever order a batch finished in.
Optuna is imported when a proposal is made, not when the registry lists this module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from controller.research.level1.offline import OfflineProposer
from controller.research.level1.proposer import (
    Proposal,
    ProposerContext,
    point_proposal,
    present_knobs,
)
from controller.research.level1.space import Knob
from controller.research.level1.typed_points import (
    derived_seed,
    exponents,
    failed,
    from_internal,
    to_internal,
    trial_configs,
    tried,
)
from trainer.knobs import KnobValue

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

REDRAWS = 8  # asks before giving up on a point that differs from the incumbent


def distribution(knob: Knob) -> BaseDistribution:
    """The Optuna distribution a knob's typed range maps to."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if knob.kind == "choice":
        return CategoricalDistribution(tuple(range(len(knob.choices))))
    if knob.power_of_two:
        low, high = exponents(knob)
        return IntDistribution(low, high)
    if knob.kind == "int":
        low, high = math.ceil(knob.low), math.floor(knob.high)
        return IntDistribution(low, high, log=knob.log and low >= 1)
    return FloatDistribution(knob.low, knob.high, log=knob.log and knob.low > 0)


class TPEProposer:
    """Optuna's TPESampler, told every finished trial of the run."""

    tag = "tpe"
    label = "tpe: Optuna's TPE sampler over the typed knobs (offline, no LLM)"
    fixes_crashes = False
    reads_context = False

    def __init__(self, seed: int, baseline: Mapping[str, Any]) -> None:
        self.seed = seed
        self.baseline = dict(baseline)  # the knobs of trial 0's train.py
        self.told = 0  # trials the last proposal's study was told (for reports and tests)

    def propose(self, ctx: ProposerContext) -> Proposal:
        import optuna
        from optuna.samplers import TPESampler
        from optuna.trial import create_trial

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        knobs = present_knobs(ctx)
        dists = {k.name: distribution(k) for k in knobs}
        configs = trial_configs(ctx.history, self.baseline)
        sampler = TPESampler(seed=derived_seed("tpe", self.seed, ctx.trial_index,
                                               len(ctx.rejections)))
        study = optuna.create_study(direction="minimize", sampler=sampler)
        told = [t for t in sorted(ctx.history, key=lambda r: r.index)
                if tried(t) and t.index in configs]
        worst = max((t.val_bpb for t in told if not failed(t) and t.val_bpb is not None),
                    default=0.0)
        for t in told:
            # A crash is told as an infeasible trial (Optuna's constraints): TPE then puts
            # it with the bad ones. Told as FAIL, TPE ignores it and keeps proposing the
            # region that crashed (measured on the surrogate: 15 crashes in a row).
            params = {k.name: v for k in knobs
                      if (v := to_internal(k, configs[t.index].get(k.name))) is not None}
            crashed = failed(t)
            study.add_trial(create_trial(
                value=worst if crashed else t.val_bpb, params=params,
                distributions={n: dists[n] for n in params},
                constraints={"crashed": 1.0 if crashed else 0.0}))
        self.told = len(told)
        point: dict[str, KnobValue] = {}
        for _ in range(REDRAWS):
            asked = study.ask(dists).params
            point = {k.name: from_internal(k, asked[k.name]) for k in knobs}
            if any(point[k] != ctx.incumbent.get(k) for k in point):
                break
        return point_proposal(point, ctx.incumbent, self.tag)


PROPOSER = OfflineProposer(
    name="tpe", description="Optuna's TPE sampler over the typed knobs",
    build=lambda s: TPEProposer(s.seed, s.baseline),
    arm="field: Optuna's TPE sampler (offline)", default_arm=True)
