"""`cmaes`: CMA-ES over the numeric knobs, with the `cmaes` package (the implementation
Optuna's CmaEsSampler runs on), in the typed space normalised to the unit cube
(typed_points.py).

It starts at the baseline's configuration with sigma a sixth of each normalised range
(Optuna's default); its own finished points, in trial order, form generations of
`population_size` that update the distribution (a crash ranks last in its generation).
Choice knobs, which CMA-ES cannot model, are drawn uniformly, as Optuna's sampler does.

The resume rule: telling the stored points again, generation by generation, rebuilds the
distribution (mean, sigma, covariance) exactly - the update draws no random numbers - and
each ask is reseeded by (seed, trial, retry). Why not CmaEsSampler itself: it keeps its
state pickled in the system attributes of the trials it asked, and a trial replayed with
fixed params never reaches it, so its state cannot be rebuilt from the run's store (it
stayed at generation 0, i.e. random search). The `cmaes` package and numpy are imported
when a proposal is made, not when the registry lists this module.
"""

from __future__ import annotations

import random
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
    failed,
    from_unit,
    has_width,
    to_unit,
    trial_configs,
    tried,
)
from trainer.knobs import KnobValue

if TYPE_CHECKING:
    import cmaes

REDRAWS = 8  # asks before giving up on a point that differs from the incumbent


class CmaEsProposer:
    """CMA-ES told its own finished points of the run, in whole generations."""

    tag = "cmaes"
    label = "cmaes: CMA-ES (the cmaes package) over the typed knobs (offline, no LLM)"
    fixes_crashes = False
    reads_context = False

    def __init__(self, seed: int, baseline: Mapping[str, Any]) -> None:
        self.seed = seed
        self.baseline = dict(baseline)
        self.told = 0  # points told to the strategy by the last proposal
        self.generation = 0

    def propose(self, ctx: ProposerContext) -> Proposal:
        knobs = present_knobs(ctx)
        numeric = [k for k in knobs if k.kind != "choice" and has_width(k)]
        rng = random.Random(derived_seed("cmaes", self.seed, ctx.trial_index,
                                         len(ctx.rejections)))
        point: dict[str, KnobValue] = {}
        strategy = self._strategy(ctx, numeric) if numeric else None
        for _ in range(REDRAWS):
            point = {k.name: rng.choice(k.choices) for k in knobs if k.kind == "choice"}
            point |= {k.name: ctx.incumbent[k.name] for k in knobs
                      if k.kind != "choice" and k not in numeric}
            if strategy is not None:
                x = strategy.ask()
                point |= {k.name: from_unit(k, float(u)) for k, u in zip(numeric, x,
                                                                          strict=True)}
            point = {k.name: point[k.name] for k in knobs}
            if any(point[k] != ctx.incumbent.get(k) for k in point):
                break
        return point_proposal(point, ctx.incumbent, self.tag)

    def _strategy(self, ctx: ProposerContext, numeric: list[Knob]) -> cmaes.CMA:
        import cmaes
        import numpy as np

        start = [to_unit(k, self.baseline.get(k.name)) for k in numeric]
        mean = np.array([0.5 if u is None else u for u in start])
        strategy = cmaes.CMA(mean=mean, sigma=1 / 6, bounds=np.array([[0.0, 1.0]] * len(
            numeric)), seed=self.seed % 2**31)
        configs = trial_configs(ctx.history, self.baseline)
        points: list[tuple[Any, float | None]] = []
        for t in sorted(ctx.history, key=lambda r: r.index):
            if not (tried(t) and t.index in configs and t.description.endswith(
                    f"[{self.tag}]")):
                continue
            x = [to_unit(k, configs[t.index].get(k.name)) for k in numeric]
            if any(u is None for u in x):
                continue  # a point outside today's ranges
            points.append((np.array(x, dtype=float), None if failed(t) else t.val_bpb))
        finite = [v for _, v in points if v is not None]
        penalty = (max(finite) + 1.0 + abs(max(finite))) if finite else 1.0
        size = strategy.population_size
        whole = len(points) // size * size
        for g in range(0, whole, size):
            strategy.tell([(x, penalty if v is None else v) for x, v in points[g:g + size]])
        self.told, self.generation = whole, strategy.generation
        # Points asked but not judged yet (a batch) and retries differ by their seed.
        strategy.reseed_rng(derived_seed("cmaes-ask", self.seed, ctx.trial_index,
                                         len(ctx.rejections)) % 2**31)
        return strategy


PROPOSER = OfflineProposer(
    name="cmaes", description="CMA-ES over the typed knobs",
    build=lambda s: CmaEsProposer(s.seed, s.baseline),
    arm="field: CMA-ES (offline)", default_arm=True)
