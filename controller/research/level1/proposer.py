"""Proposers suggest the next change to the incumbent train.py.

Two offline, seeded, non-LLM proposers live here (the optimizers of the field, TPE and
CMA-ES, are in optimizers.py):

- `LocalPerturbation` ("local"): a (1+1) local search - it moves one or two knobs of the
  INCUMBENT by a random step within their typed ranges. It lets the whole system run
  without an API key.
- `RandomSearch` ("random_search"): true random search - every knob drawn independently
  and uniformly over its typed range (log-uniform for log knobs, uniform over exponents
  for powers of two), ignoring the incumbent. The control arm every comparison needs.

A proposal depends only on the seed, the trial index (and the incumbent, for local), so
a restarted run re-proposes exactly what it would have. The random draws are keyed by
knob name (common random numbers): each knob's draw comes from its own generator, and
which knobs move is decided by a per-knob priority, so two runs of the same seed whose
spaces differ by a knob Level 1.5 froze still propose the same moves on every trial that
does not pick the frozen knob - an ablation's arms stay paired.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from controller.research.level1.space import Knob, KnobValue, SearchSpace
from controller.research.settings import ProposerSettings
from controller.store.records import TrialRecord

if TYPE_CHECKING:
    from controller.research.level1.validate import Validator


@dataclass(frozen=True)
class Proposal:
    """A change to try. `source` is the full candidate when the proposer built it (LLM
    proposers); otherwise the loop applies `changes` to the base. `invalid` holds the
    reason when no valid proposal came out of the allowed retries."""

    changes: dict[str, KnobValue]
    description: str
    tokens_used: int = 0
    source: str | None = None
    hypothesis: str = ""
    invalid: str = ""
    proposal_id: str = ""
    transcript: tuple[dict[str, Any], ...] = ()  # the calls that made it (for llm.json)
    llm_tokens: int = 0  # usage of those calls (metered into the run's total already)
    cost_usd: float = 0.0


@dataclass(frozen=True)
class CrashInfo:
    """A crashed trial a proposal should fix (its source is the context's base_source)."""

    trial: int
    error: str
    log_tail: str


@dataclass(frozen=True)
class ProposerContext:
    trial_index: int
    incumbent: dict[str, Any]  # knob values of the base train.py (the incumbent best)
    space: SearchSpace  # without the frozen knobs
    history: Sequence[TrialRecord]
    base_source: str = ""  # the train.py a proposal edits (the incumbent, or a crash)
    base_trial: int | None = None
    best_val_bpb: float | None = None
    baseline_val_bpb: float | None = None
    noise_sigma: float | None = None
    crash: CrashInfo | None = None  # set: propose a fix of this crashed trial
    in_flight: tuple[str, ...] = ()  # trials running or proposed but not judged yet
    lessons: tuple[str, ...] = ()  # memory of earlier runs on this task
    # Text the search mechanisms add to the prompt (filled by Level 2, issue 6).
    mechanism_context: tuple[str, ...] = ()
    # Reasons search mechanisms rejected this trial's earlier proposals (ask again).
    rejections: tuple[str, ...] = ()
    validator: Validator | None = field(default=None, compare=False)


class Proposer(Protocol):
    label: str
    fixes_crashes: bool  # whether it can use ctx.crash

    def propose(self, ctx: ProposerContext) -> Proposal: ...


class LocalPerturbation:
    label = "local: (1+1) perturbation of the incumbent (offline, no LLM)"
    fixes_crashes = False
    reads_context = False  # whether mechanism context text reaches it

    def __init__(self, seed: int, settings: ProposerSettings) -> None:
        self.seed = seed
        self.max_changes = settings.max_changes
        self.step = settings.step

    def propose(self, ctx: ProposerContext) -> Proposal:
        salt = f":{len(ctx.rejections)}" if ctx.rejections else ""  # a new draw per retry
        key = f"{self.seed}:{ctx.trial_index}{salt}"
        candidates = [k for k in ctx.space.knobs if k.name in ctx.incumbent]
        if not candidates:
            raise ValueError("no knob of the search space is present in train.py")
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


class RandomSearch:
    """Uniform random search over the typed ranges; the incumbent only says which knobs
    train.py has (a draw equal to it on every knob is drawn again)."""

    label = "random_search: uniform draws over the typed knob ranges (offline, no LLM)"
    fixes_crashes = False
    reads_context = False

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def propose(self, ctx: ProposerContext) -> Proposal:
        knobs = [k for k in ctx.space.knobs if k.name in ctx.incumbent]
        if not knobs:
            raise ValueError("no knob of the search space is present in train.py")
        salt = f":{len(ctx.rejections)}" if ctx.rejections else ""
        key = f"random_search:{self.seed}:{ctx.trial_index}{salt}"
        for attempt in range(16):
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


def point_proposal(point: dict[str, KnobValue], incumbent: dict[str, Any],
                   tag: str) -> Proposal:
    """A full point as a proposal: every knob is set (so the trial runs this point even if
    the incumbent moved before launch); the description names the knobs that move."""
    moved = {k: v for k, v in point.items() if incumbent.get(k) != v}
    text = ", ".join(f"{k} {incumbent.get(k)!r} -> {v!r}" for k, v in moved.items())
    return Proposal(changes=dict(point), description=f"{text or 'the incumbent'} [{tag}]")


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

