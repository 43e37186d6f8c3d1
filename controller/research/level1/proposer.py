"""The Proposer protocol: what suggests the next change to the incumbent train.py, and
the context it is given.

Proposers are the LLM proposer (llm_proposer.py) and the offline ones, one module each
under offline/ (listed by its registry, offline/__init__.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from controller.research.level1.space import SearchSpace
from controller.store.records import TrialRecord
from trainer.knobs import KnobValue

if TYPE_CHECKING:
    from controller.research.level1.space import Knob
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
    # Set by Level 2's portfolio: the arm that made it and that arm's probability.
    arm: str = ""
    arm_probability: float | None = None
    # Why the LLM gave no usable proposal, when another proposer made this one instead.
    llm_failure: str = ""


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
    history: Sequence[TrialRecord]  # the run's finished trials
    base_source: str = ""  # the train.py a proposal edits (the incumbent, or a crash)
    base_trial: int | None = None
    best_val_bpb: float | None = None
    baseline_val_bpb: float | None = None
    noise_sigma: float | None = None
    crash: CrashInfo | None = None  # set: propose a fix of this crashed trial
    in_flight: tuple[str, ...] = ()  # trials running or proposed but not judged yet
    lessons: tuple[str, ...] = ()  # memory of earlier runs on this task
    # Text the search mechanisms (Level 2) add to the prompt.
    mechanism_context: tuple[str, ...] = ()
    # Reasons search mechanisms rejected this trial's earlier proposals (ask again).
    rejections: tuple[str, ...] = ()
    # Trials' reported training curves (progress.py): trial -> [(step, value)], in the
    # task's metric; the candidates' claims, shown to an LLM as a short summary.
    curves: Mapping[int, Sequence[tuple[int, float | None]]] = field(default_factory=dict)
    validator: Validator | None = field(default=None, compare=False)


class Proposer(Protocol):
    """Suggests the change trial `ctx.trial_index` will try.

    The resume rule: a proposer keeps no state that only lives in memory. Whatever it
    learns is rebuilt, on every call, from what the context holds - the stored trials
    (`ctx.history`), the trial index, the incumbent and the number of rejections - plus
    what it was constructed with (the run's seed, the baseline's knobs, its settings).
    So a restarted controller, or a fresh proposer given the same context, proposes the
    same next point, and a retry after a rejection (`ctx.rejections`) draws another.
    """

    label: str  # for logs and reports
    fixes_crashes: bool  # whether it can use ctx.crash
    # A proposer may also say `reads_context = False` (every offline one does): then no
    # mechanism's context text is computed for it (read with getattr, default True).

    def propose(self, ctx: ProposerContext) -> Proposal: ...


def present_knobs(ctx: ProposerContext) -> list[Knob]:
    """The knobs a proposal may set this trial: in the (unfrozen) space and in train.py.
    Raises ValueError when there are none."""
    knobs = [k for k in ctx.space.knobs if k.name in ctx.incumbent]
    if not knobs:
        raise ValueError("no knob of the search space is present in train.py")
    return knobs


def retry_salt(ctx: ProposerContext) -> str:
    """Empty on a trial's first proposal; distinct for each retry after a rejection."""
    return f":{len(ctx.rejections)}" if ctx.rejections else ""


def point_proposal(point: dict[str, KnobValue], incumbent: dict[str, Any],
                   tag: str) -> Proposal:
    """A full point as a proposal: every knob is set (so the trial runs this point even if
    the incumbent moved before launch); the description names the knobs that move and
    ends with the proposer's tag, e.g. "[tpe]"."""
    moved = {k: v for k, v in point.items() if incumbent.get(k) != v}
    text = ", ".join(f"{k} {incumbent.get(k)!r} -> {v!r}" for k, v in moved.items())
    return Proposal(changes=dict(point), description=f"{text or 'the incumbent'} [{tag}]")
