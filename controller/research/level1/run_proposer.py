"""Build a run's proposer from its settings: an offline one from the registry
(offline/), or an LLM proposer on a provider stack whose every call is recorded with the
run."""

from __future__ import annotations

import threading

from controller.errors import FieldError
from controller.llm.accounting import Claim, Pricing
from controller.llm.factory import build_provider
from controller.llm.settings import LLMAccess
from controller.llm.types import Provider
from controller.research.level1 import offline
from controller.research.level1.llm_proposer import LLMProposer
from controller.research.level1.loop import llm_budget_reason
from controller.research.level1.proposer import Proposer
from controller.research.level2.portfolio_proposer import PortfolioProposer
from controller.research.settings import RunSettings
from controller.research.task import Task, objective_of
from controller.research.tasks.knob_document import editable_path
from controller.store.llm_calls import CallLog
from controller.store.llm_capabilities import CapabilityStore
from controller.store.runs import RunStore


def build_run_provider(run_id: str, settings: RunSettings, store: RunStore,
                       access: LLMAccess, stop: threading.Event,
                       claim: Claim | None = None) -> Provider:
    """The run's provider stack; every call is recorded with the run and counts against
    its budget, and against its principal's daily quota through `claim`. Raises
    LLMConfigError (no key) or FieldError (bad LLM settings)."""
    calls = CallLog(store)
    return build_provider(
        settings.llm, access, record=lambda call: calls.record(run_id, call),
        budget_spent=lambda: llm_budget_reason(store.get_run(run_id), settings.budgets),
        replay_answers=calls.replay_answers, stop=stop, claim=claim,
        capabilities=CapabilityStore(store))


def build_proposer(run_id: str, settings: RunSettings, task: Task, store: RunStore,
                   access: LLMAccess, stop: threading.Event,
                   claim: Claim | None = None, lead: str | None = None) -> Proposer:
    """The run's proposer; with Level 2's portfolio, the portfolio over the run's proposer
    and the other arms, led by the request's `outer.portfolio_lead`, else by `lead` (the
    strategy that won the task's earlier runs); an offline lead joins the arms if it is
    not among them. Raises LLMConfigError (no key) or FieldError (bad LLM settings, or a
    proposer kind the offline registry does not hold)."""
    arms = settings.outer.portfolio_arms(settings.proposer.kind)
    if not arms:
        return _single(settings.proposer.kind, run_id, settings, task, store, access, stop,
                       claim)
    why = "named by the request" if settings.outer.portfolio_lead else \
        "the winner of earlier runs"
    lead = settings.outer.portfolio_lead or lead
    if lead is not None and lead not in arms:
        lead = lead if lead in offline.names() else None
        arms = (*arms, lead) if lead else arms
    return PortfolioProposer({arm: _single(arm, run_id, settings, task, store, access,
                                           stop, claim) for arm in arms},
                             settings.search.seed, lead, why)


FALLBACK = "local"  # proposes a trial the LLM gave no usable answer for


def _single(kind: str, run_id: str, settings: RunSettings, task: Task, store: RunStore,
            access: LLMAccess, stop: threading.Event, claim: Claim | None) -> Proposer:
    if kind != "llm":
        try:
            entry = offline.get(kind)
        except offline.UnknownProposer as exc:
            raise FieldError("proposer.kind", str(exc)) from None
        return entry.build(offline.ProposerSetup(
            settings.search.seed, task.read_knobs(task.baseline_source()), settings.proposer))
    fallback = _single(FALLBACK, run_id, settings, task, store, access, stop, claim)
    provider = build_run_provider(run_id, settings, store, access, stop, claim)
    protected = task.protected.describe() if settings.proposer.mode == "code" else ""
    llm = settings.llm
    return LLMProposer(provider, settings.proposer, Pricing.for_settings(llm), run_id,
                       task.description, protected, llm.max_tokens,
                       llm.temperature if llm.temperature >= 0 else None,
                       objective=objective_of(task), fallback=fallback,
                       editable=editable_path(task))
