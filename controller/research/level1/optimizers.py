"""The field's offline optimizers as Level-1 proposers: TPE (Optuna's TPESampler) and
CMA-ES (the `cmaes` package that Optuna's CmaEsSampler runs on).

Ask-and-tell over the task's typed search space (space.py): each knob maps to an Optuna
distribution (log-scaled floats and ints, powers of two as an integer exponent, choices
as a categorical over their positions); CMA-ES works in the same space normalised to
[0, 1]. Every finished trial is told back with its val_bpb; a crash as an infeasible
trial (TPE) or the worst of its generation (CMA-ES).

No optimizer state lives only in memory: each proposal rebuilds the optimizer from the
trials in the store, seeded from the run's seed, and asks it once.

- TPE holds no state beyond its trials: every finished trial is added to a fresh study
  and the sampler is seeded with (seed, trial index, retry).
- CMA-ES keeps a distribution (mean, sigma, covariance) that generations of its own
  points update; telling the stored points again, generation by generation, rebuilds it
  exactly (the update draws no random numbers); the ask is seeded by (seed, trial, retry).

So a controller restart, or a fresh proposer given the same history, proposes exactly
the same next point, whatever order a batch finished in. A trial's full configuration
is rebuilt from the baseline's knobs and each trial's recorded changes to its parent.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from typing import Any

import cmaes
import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import TPESampler
from optuna.trial import create_trial

from controller.research.level1.proposer import Proposal, ProposerContext, point_proposal
from controller.research.level1.space import Knob, KnobValue
from controller.store.records import TrialRecord, TrialStatus

optuna.logging.set_verbosity(optuna.logging.WARNING)
REDRAWS = 8  # asks before giving up on a point that differs from the incumbent


def distribution(knob: Knob) -> BaseDistribution:
    """The Optuna distribution a knob's typed range maps to."""
    if knob.kind == "choice":
        return CategoricalDistribution(tuple(range(len(knob.choices))))
    if knob.power_of_two:
        low, high = _exponents(knob)
        return IntDistribution(low, high)
    if knob.kind == "int":
        low, high = math.ceil(knob.low), math.floor(knob.high)
        return IntDistribution(low, high, log=knob.log and low >= 1)
    return FloatDistribution(knob.low, knob.high, log=knob.log and knob.low > 0)


def _exponents(knob: Knob) -> tuple[int, int]:
    return math.ceil(math.log2(max(knob.low, 1))), math.floor(math.log2(max(knob.high, 1)))


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
    """The knob value a distribution's sample stands for (floats to 4 significant
    digits, as train.py shows them, kept inside the range)."""
    if knob.kind == "choice":
        return knob.choices[int(value)]  # type: ignore[no-any-return]
    if knob.power_of_two:
        return int(2 ** int(value))
    if knob.kind == "int":
        return int(value)
    rounded = float(f"{float(value):.4g}")
    return rounded if knob.low <= rounded <= knob.high else float(value)


def trial_configs(history: Sequence[TrialRecord],
                  baseline: dict[str, Any]) -> dict[int, dict[str, Any]]:
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
    """A 32-bit sampler seed from the run's seed and the point being asked."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _tried(t: TrialRecord) -> bool:
    """A trial that ran (an invalid proposal never did)."""
    return t.status is not None and t.job_status != "invalid"


class _Space:
    """The knobs a proposal sets this trial: in the (unfrozen) space and in train.py."""

    def __init__(self, ctx: ProposerContext) -> None:
        self.knobs = [k for k in ctx.space.knobs if k.name in ctx.incumbent]
        if not self.knobs:
            raise ValueError("no knob of the search space is present in train.py")
        self.dists = {k.name: distribution(k) for k in self.knobs}

    def params(self, config: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for k in self.knobs:
            value = to_internal(k, config.get(k.name))
            if value is not None:
                out[k.name] = value
        return out

    def point(self, params: dict[str, Any]) -> dict[str, KnobValue]:
        return {k.name: from_internal(k, params[k.name]) for k in self.knobs}


def _failed(t: TrialRecord) -> bool:
    return t.status is TrialStatus.CRASH or t.val_bpb is None or not math.isfinite(t.val_bpb)


class TPEProposer:
    """Optuna's TPESampler (its defaults: 10 random start-up trials, then the
    tree-structured Parzen estimator), told every finished trial of the run. Stateless:
    each proposal is a fresh study of the stored trials, seeded by (seed, trial, retry)."""

    tag = "tpe"
    label = "tpe: Optuna's TPE sampler over the typed knobs (offline, no LLM)"
    fixes_crashes = False
    reads_context = False

    def __init__(self, seed: int, baseline: dict[str, Any]) -> None:
        self.seed = seed
        self.baseline = dict(baseline)  # the knobs of trial 0's train.py
        self.told = 0  # trials the last proposal's study was told (for reports and tests)

    def propose(self, ctx: ProposerContext) -> Proposal:
        space = _Space(ctx)
        configs = trial_configs(ctx.history, self.baseline)
        sampler = TPESampler(seed=derived_seed("tpe", self.seed, ctx.trial_index,
                                               len(ctx.rejections)))
        study = optuna.create_study(direction="minimize", sampler=sampler)
        tried = [t for t in sorted(ctx.history, key=lambda r: r.index)
                 if _tried(t) and t.index in configs]
        worst = max((t.val_bpb for t in tried if not _failed(t) and t.val_bpb is not None),
                    default=0.0)
        for t in tried:
            # A crash is told as an infeasible trial (Optuna's constraints): TPE then puts
            # it with the bad ones. Told as FAIL, TPE ignores it and keeps proposing the
            # region that crashed (measured on the surrogate: 15 crashes in a row).
            params = space.params(configs[t.index])
            crashed = _failed(t)
            study.add_trial(create_trial(
                value=worst if crashed else t.val_bpb, params=params,
                distributions={n: space.dists[n] for n in params},
                constraints={"crashed": 1.0 if crashed else 0.0}))
        self.told = len(tried)
        point: dict[str, KnobValue] = {}
        for _ in range(REDRAWS):
            point = space.point(study.ask(space.dists).params)
            if any(point[k] != ctx.incumbent.get(k) for k in point):
                break
        return point_proposal(point, ctx.incumbent, self.tag)


def to_unit(knob: Knob, value: Any) -> float | None:
    """A numeric knob's value in [0, 1] of its range (log scale for log knobs and powers
    of two; ints over [low - 0.5, high + 0.5] so rounding back is fair), or None."""
    inner = to_internal(knob, value)
    if inner is None:
        return None
    low, high = _unit_bounds(knob)
    x = math.log(inner) if knob.log and not knob.power_of_two else float(inner)
    return min(max((x - low) / (high - low), 0.0), 1.0)


def from_unit(knob: Knob, u: float) -> KnobValue:
    low, high = _unit_bounds(knob)
    x = low + min(max(u, 0.0), 1.0) * (high - low)
    if knob.log and not knob.power_of_two:
        x = math.exp(x)
    dist = distribution(knob)
    if isinstance(dist, IntDistribution):
        return from_internal(knob, min(max(round(x), dist.low), dist.high))
    return from_internal(knob, min(max(x, knob.low), knob.high))


def _unit_bounds(knob: Knob) -> tuple[float, float]:
    dist = distribution(knob)
    assert isinstance(dist, IntDistribution | FloatDistribution)
    if isinstance(dist, IntDistribution):
        if dist.log:
            return math.log(dist.low - 0.5) if dist.low > 1 else math.log(0.5), \
                math.log(dist.high + 0.5)
        return dist.low - 0.5, dist.high + 0.5
    if dist.log:
        return math.log(dist.low), math.log(dist.high)
    return dist.low, dist.high


class CmaEsProposer:
    """CMA-ES over the numeric knobs, with the `cmaes` package (the implementation
    Optuna's CmaEsSampler runs on). It starts at the baseline's configuration with sigma
    a sixth of each normalised range (Optuna's default); its own finished points, in
    trial order, form generations of `population_size` that update the distribution
    (a crash ranks last in its generation). Choice knobs, which CMA-ES cannot model, are
    drawn uniformly, as Optuna's sampler does.

    Why not CmaEsSampler itself: it keeps its state pickled in the system attributes of
    the trials it asked, and a trial replayed with fixed params never reaches it (such a
    trial gets no generation), so its state cannot be rebuilt from the run's store - it
    stayed at generation 0, i.e. random search. Telling the stored points to `cmaes.CMA`
    rebuilds the distribution exactly; each ask is reseeded by (seed, trial, retry)."""

    tag = "cmaes"
    label = "cmaes: CMA-ES (the cmaes package) over the typed knobs (offline, no LLM)"
    fixes_crashes = False
    reads_context = False

    def __init__(self, seed: int, baseline: dict[str, Any]) -> None:
        self.seed = seed
        self.baseline = dict(baseline)
        self.told = 0  # points told to the strategy by the last proposal
        self.generation = 0

    def propose(self, ctx: ProposerContext) -> Proposal:
        knobs = [k for k in ctx.space.knobs if k.name in ctx.incumbent]
        if not knobs:
            raise ValueError("no knob of the search space is present in train.py")
        numeric = [k for k in knobs if k.kind != "choice" and _unit_bounds_ok(k)]
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
        start = [to_unit(k, self.baseline.get(k.name)) for k in numeric]
        mean = np.array([0.5 if u is None else u for u in start])
        strategy = cmaes.CMA(mean=mean, sigma=1 / 6, bounds=np.array([[0.0, 1.0]] * len(
            numeric)), seed=self.seed % 2**31)
        configs = trial_configs(ctx.history, self.baseline)
        points: list[tuple[Any, float | None]] = []
        for t in sorted(ctx.history, key=lambda r: r.index):
            if not (_tried(t) and t.index in configs and t.description.endswith(
                    f"[{self.tag}]")):
                continue
            x = [to_unit(k, configs[t.index].get(k.name)) for k in numeric]
            if any(u is None for u in x):
                continue  # a point outside today's ranges
            points.append((np.array(x, dtype=float), None if _failed(t) else t.val_bpb))
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


def _unit_bounds_ok(knob: Knob) -> bool:
    low, high = _unit_bounds(knob)
    return high > low
