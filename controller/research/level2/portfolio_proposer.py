"""The portfolio as the run's proposer: each trial, draw an arm by the allocation
(portfolio.py) and let that arm propose, with the whole run's history.

One history serves every arm: a proposer is rebuilt from the stored trials on every call
(the Proposer protocol's resume rule), so TPE and CMA-ES learn from the trials any arm
proposed, and switching arm costs nothing. The arm and its probability go out with the
proposal and are stored with the trial.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from controller.research.level1.proposer import Proposal, Proposer, ProposerContext
from controller.research.level2 import portfolio
from controller.store.records import TrialRecord, TrialStatus


def rank_reward(loss: float | None, earlier: Sequence[float]) -> float:
    """The share of `earlier` losses that `loss` beats (ties half); 0 for no loss."""
    if loss is None or not math.isfinite(loss):
        return 0.0
    if not earlier:
        return 0.5
    beaten = sum(1.0 if loss < e else 0.5 if loss == e else 0.0 for e in earlier)
    return beaten / len(earlier)


def pulls_of(history: Sequence[TrialRecord]) -> list[portfolio.Pull]:
    """The finished trials a portfolio draw made and whose proposal ran as the arm made
    it (a mechanism's suggestion or filter that replaced it takes the credit instead),
    each rewarded by its rank among the finished results of lower index."""
    pulls = []
    earlier: list[float] = []
    for t in sorted(history, key=lambda t: t.index):
        if not t.finished or t.status is None:
            continue
        if t.arm and t.arm_probability is not None and t.proposal_source == "proposer":
            # An arm (the LLM) that gave no usable proposal earns nothing for the trial
            # its fallback made.
            reward = 0.0 if t.llm_failure else rank_reward(t.val_bpb, earlier)
            pulls.append(portfolio.Pull(t.arm, t.arm_probability, reward,
                                        t.status is TrialStatus.KEEP and not t.llm_failure))
        if t.val_bpb is not None and math.isfinite(t.val_bpb):
            earlier.append(t.val_bpb)
    return pulls


class PortfolioProposer:
    """Thompson-sampling allocation over `arms` (name -> proposer), seeded by the run."""

    tag = "portfolio"

    def __init__(self, arms: Mapping[str, Proposer], seed: int,
                 lead: str | None = None, lead_why: str = "") -> None:
        if not arms:
            raise ValueError("a portfolio needs at least one arm")
        if lead is not None and lead not in arms:
            raise ValueError(f"the lead {lead!r} is not an arm")
        self.arms = dict(arms)
        self.seed = seed
        self.lead = lead  # the arm that takes LEAD_SHARE of every draw, if any
        led = f" (led by {lead}{': ' if lead_why else ''}{lead_why})" if lead else ""
        self.label = "portfolio of " + ", ".join(self.arms) + led
        self._led = led
        # A crashed trial is fixed by an arm that can (the LLM), outside the draw.
        self._fixer = next((n for n, p in self.arms.items() if p.fixes_crashes), None)
        self.fixes_crashes = self._fixer is not None
        self.reads_context = any(getattr(p, "reads_context", True) for p in self.arms.values())

    def allocation(self, ctx: ProposerContext) -> dict[str, float]:
        """The probability each arm has of proposing trial `ctx.trial_index`."""
        posts = portfolio.posteriors(list(self.arms), pulls_of(ctx.history))
        return portfolio.led(portfolio.allocation(posts, self._rng(ctx, "allocation")),
                             self.lead)

    def propose(self, ctx: ProposerContext) -> Proposal:
        if ctx.crash is not None and self._fixer is not None:
            return self.arms[self._fixer].propose(ctx)  # not a draw: no arm credit
        probs = self.allocation(ctx)
        arm = portfolio.draw(probs, self._rng(ctx, "draw"))
        proposer = self.arms[arm]
        if not getattr(proposer, "reads_context", True):
            ctx = dataclasses.replace(ctx, mechanism_context=())
        if not proposer.fixes_crashes:
            ctx = dataclasses.replace(ctx, crash=None)
        proposal = proposer.propose(ctx)
        return dataclasses.replace(proposal, arm=arm, arm_probability=probs[arm])

    def _rng(self, ctx: ProposerContext, purpose: str) -> np.random.Generator:
        return portfolio.seeded("portfolio", purpose, self.seed, ctx.trial_index,
                                len(ctx.rejections))

    def report(self, history: Sequence[TrialRecord]) -> str:
        """One line for the run's summary: per arm, its trials and keeps, its
        inverse-propensity mean rank, and its probability for a next trial."""
        pulls = pulls_of(history)
        if not pulls:
            return ""
        posts = portfolio.posteriors(list(self.arms), pulls)
        nxt = portfolio.led(portfolio.allocation(posts, portfolio.seeded(
            "portfolio", "report", self.seed, len(pulls))), self.lead)
        out = portfolio.retired(posts)
        parts = []
        for arm in sorted(self.arms, key=lambda a: -nxt[a]):
            c = portfolio.ipw_reward(pulls, arm)
            state = f"next p {nxt[arm]:.2f}" + (", retired" if arm in out else "")
            parts.append(f"{arm} {c.pulls} trials/{c.kept} kept (IPW mean rank "
                         f"{c.reward:.2f} ± {c.stderr:.2f}; {state})")
        return f"portfolio{self._led}: " + ", ".join(parts)
