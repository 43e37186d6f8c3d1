"""Build a run's provider stack: SDK provider (or replay) -> metering -> retries."""

from __future__ import annotations

import threading
from collections.abc import Callable

from controller.llm.accounting import CallRecord, Claim, MeteredProvider, Pricing
from controller.llm.capabilities import CapabilityMemory
from controller.llm.keys import resolve_key
from controller.llm.providers import AnthropicProvider, OpenAIProvider
from controller.llm.replay import Answers, ReplayProvider
from controller.llm.retry import RetryingProvider
from controller.llm.settings import LLMAccess, LLMSettings
from controller.llm.types import Provider


def build_provider(settings: LLMSettings, access: LLMAccess, *,
                   record: Callable[[CallRecord], None], budget_spent: Callable[[], str],
                   replay_answers: Callable[[str], Answers],
                   stop: threading.Event | None = None, claim: Claim | None = None,
                   capabilities: CapabilityMemory | None = None) -> Provider:
    """Raises LLMConfigError (no key) or FieldError (a base URL this controller does not
    allow). Each attempt is metered, so retries show in the accounting too; `claim`
    holds each attempt's bound of the principal's daily quota (llm/spend.py);
    `capabilities` remembers what each OpenAI-compatible endpoint accepts."""
    settings.validate()
    raw: Provider
    if settings.provider == "replay":
        raw = ReplayProvider(settings.replay_run, replay_answers(settings.replay_run))
    else:
        access.check_base_url(settings.base_url)
        key = resolve_key(settings.provider, access, settings.base_url)
        raw = (AnthropicProvider(settings, key) if settings.provider == "anthropic"
               else OpenAIProvider(settings, key, capabilities))
    metered = MeteredProvider(raw, Pricing.for_settings(settings), record, budget_spent, claim)
    return RetryingProvider(metered, settings.max_attempts, settings.backoff_seconds, stop,
                            timeout_seconds=settings.timeout_seconds)
