"""The numbers of an ablation's report: per arm, Δval_bpb on fresh seeds and in the
search, the normalised area under the best-so-far curve, tests against the control
arm (Holm-corrected), LLM usage and mechanism calls, and the warnings that keep a
reader from over-claiming."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from controller.analysis import stats
from controller.analysis.ablation import CONTROL, AblationSpec
from controller.analysis.curves import improvement_curve, normalized_auc
from controller.analysis.data import MechanismStats, RunData, StateDir
from controller.analysis.stats import Comparison, FloatArray, Interval


@dataclass
class ArmSummary:
    name: str
    title: str
    runs: list[RunData] = field(default_factory=list)
    repeats: list[int] = field(default_factory=list)  # repeat of each run
    fresh_delta: dict[int, float] = field(default_factory=dict)  # repeat -> Δ on fresh seeds
    search_delta: dict[int, float] = field(default_factory=dict)  # best - baseline in search
    auc: dict[int, float] = field(default_factory=dict)
    curves: FloatArray = field(default_factory=lambda: np.zeros((0, 0)))
    fresh_ci: Interval | None = None
    search_ci: Interval | None = None
    auc_ci: Interval | None = None
    comparison: Comparison | None = None
    llm_tokens: int = 0
    llm_cost_usd: float = 0.0
    failed: int = 0
    mechanisms: dict[str, MechanismStats] = field(default_factory=dict)
    mechanisms_known: bool = False
    trials: dict[int, int] = field(default_factory=dict)  # repeat -> search trials finished
    identical_to: str = ""  # an earlier arm whose every repeat this one matches exactly


def _trace(arm: ArmSummary) -> list[list[tuple[int, float | None, str]]]:
    return [[(t.index, t.val_bpb, t.status.value if t.status else "") for t in r.trials]
            for r in arm.runs]


def same_results(a: ArmSummary, b: ArmSummary) -> bool:
    """Every repeat alike: fresh-seed Δ, search Δ, the best-so-far curve and every
    trial's value (two arms that never beat the baseline share a flat curve and Δ = 0
    while running different trials: not identical)."""
    return bool(a.runs) and a.repeats == b.repeats and a.fresh_delta == b.fresh_delta \
        and a.search_delta == b.search_delta and a.curves.shape == b.curves.shape \
        and bool(np.array_equal(a.curves, b.curves, equal_nan=True)) \
        and _trace(a) == _trace(b)


@dataclass
class AblationSummary:
    spec: AblationSpec
    arms: list[ArmSummary]
    control: str
    warnings: list[str]
    noise_sigma: float  # std of the baseline over all fresh-seed evaluations
    best: RunData | None  # the run with the lowest fresh-seed value


def summarize_ablation(spec: AblationSpec, state: StateDir) -> AblationSummary:
    arms: list[ArmSummary] = []
    warnings: list[str] = []
    best: tuple[float, RunData] | None = None
    for arm in spec.arms:
        s = ArmSummary(arm.name, arm.title)
        for r in range(spec.repeats):
            cell = spec.cells.get(f"{arm.name}/{r}")
            if cell is None or not cell.run_id:
                continue
            if cell.state != "succeeded":
                s.failed += 1
                continue
            data = state.load(cell.run_id)
            s.runs.append(data)
            s.repeats.append(r)
            s.trials[r] = sum(1 for t in data.trials if t.finished and t.index > 0)
            s.llm_tokens += data.run.llm_tokens_used
            s.llm_cost_usd += data.run.llm_cost_usd
            if data.run.best_val_bpb is not None and data.run.baseline_val_bpb is not None:
                s.search_delta[r] = data.run.best_val_bpb - data.run.baseline_val_bpb
            curve = improvement_curve(data.trials, spec.trials)
            s.auc[r] = normalized_auc(curve)
            s.curves = curve[None, :] if s.curves.size == 0 else np.vstack([s.curves, curve])
            fresh, base = spec.reeval.get(f"{arm.name}/{r}"), spec.reeval.get(f"baseline/{r}")
            if fresh is not None and base is not None and fresh.value is not None \
                    and base.value is not None:
                s.fresh_delta[r] = fresh.value - base.value
                if best is None or fresh.value < best[0]:
                    best = (fresh.value, data)
            if data.mechanisms:
                s.mechanisms_known = True
                for m in data.mechanisms:
                    total = s.mechanisms.setdefault(m.mechanism, MechanismStats(
                        m.mechanism, 0, 0, 0, {}))
                    effects = dict(total.effects)
                    for k, v in m.effects.items():
                        effects[k] = effects.get(k, 0) + v
                    s.mechanisms[m.mechanism] = MechanismStats(
                        m.mechanism, total.calls + m.calls, total.effective + m.effective,
                        total.failures + m.failures, effects, m.origin or total.origin)
        s.fresh_ci = stats.t_mean_ci(list(s.fresh_delta.values()))
        s.search_ci = stats.t_mean_ci(list(s.search_delta.values()))
        s.auc_ci = stats.t_mean_ci([v for v in s.auc.values() if math.isfinite(v)])
        if s.failed:
            warnings.append(f"arm {arm.name}: {s.failed} run(s) did not succeed and are "
                            "left out of its statistics")
        if arm.outer and s.mechanisms_known and not any(
                m.effective for m in s.mechanisms.values()) and "2" in arm.levels:
            warnings.append(f"arm {arm.name}: no mechanism hook changed anything; by "
                            "a mechanism that changes nothing did not really run")
        arms.append(s)
    for i, a in enumerate(arms):
        a.identical_to = next((b.name for b in arms[:i] if not b.identical_to
                               and same_results(a, b)), "")
        if a.identical_to:
            warnings.append(f"arm {a.name} came out identical to arm {a.identical_to} in "
                            "every repeat: they did not differ in what ran")
    names = [a.name for a in arms]
    control = CONTROL if CONTROL in names else names[0]
    comparisons = stats.compare({a.name: a.fresh_delta for a in arms}, control)
    for c in comparisons:
        next(a for a in arms if a.name == c.arm).comparison = c
    warnings.extend(stats.power_warnings(comparisons))
    if len(arms) < 2:
        warnings.append("one arm only: there is nothing to compare it with")
    for name, why in spec.skipped.items():
        warnings.append(f"arm {name} was not run: {why}")
    base_values = [c.value for k, c in spec.reeval.items()
                   if k.startswith("baseline/") and c.value is not None]
    sigmas = [c.sigma for k, c in spec.reeval.items()
              if k.startswith("baseline/") and c.sigma is not None]
    # Pooled within-repeat std of the baseline: the measured noise of one evaluation.
    noise = float(np.sqrt(np.mean(np.square(sigmas)))) if sigmas else math.nan
    if base_values and math.isfinite(noise):
        for a in arms:
            if a.fresh_ci and math.isfinite(a.fresh_ci.estimate) and \
                    abs(a.fresh_ci.estimate) < 2 * noise:
                warnings.append(f"arm {a.name}: its mean Δ on fresh seeds "
                                f"({a.fresh_ci.estimate:+.2e}) is within 2 sigma of the "
                                f"measured noise ({noise:.1e})")
    return AblationSummary(spec, arms, control, warnings, noise,
                           best[1] if best is not None else None)
