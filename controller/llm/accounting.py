"""Tokens and cost of every call, recorded with the run as it happens, and the run's LLM
budget checked before each call. Prices are estimates (USD per million tokens) that a
run's settings may override."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from controller.llm.errors import LLMBudgetSpent, LLMError
from controller.llm.settings import LLMSettings
from controller.llm.spend import prompt_tokens
from controller.llm.types import CallTag, LLMRequest, LLMResponse, Provider

# Holds (tokens, USD) of the run's principal's daily quota while a call is in flight
# (controller/llm/spend.py's DailySpend.claim, bound to the principal).
Claim = Callable[[int, float], contextlib.AbstractContextManager[None]]

# (input, output) USD per million tokens, by model-name prefix; longest prefix wins.
PRICES: dict[str, tuple[float, float]] = {
    "claude-opus": (5.0, 25.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-sonnet": (3.0, 15.0),
    "claude-haiku": (1.0, 5.0),
    "deepseek-chat": (0.27, 1.10),
    "deepseek-reasoner": (0.55, 2.19),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.5, 10.0),
}


# Prompt-cache prices as multiples of the input price, by provider: Anthropic bills a
# cache write at 1.25x and a read at 0.1x; OpenAI-compatible servers a cached read at 0.5x.
CACHE_FACTORS: dict[str, tuple[float, float]] = {"anthropic": (0.1, 1.25),
                                                 "openai": (0.5, 1.0)}


@dataclass(frozen=True)
class Pricing:
    input_per_mtok: float
    output_per_mtok: float
    cache_read_factor: float = 1.0
    cache_write_factor: float = 1.0

    @classmethod
    def for_settings(cls, settings: LLMSettings) -> Pricing:
        table = next((PRICES[p] for p in sorted(PRICES, key=len, reverse=True)
                      if settings.model_name.startswith(p)), (0.0, 0.0))
        read, write = CACHE_FACTORS.get(settings.provider, (1.0, 1.0))
        return cls(settings.price_input_per_mtok if settings.price_input_per_mtok >= 0
                   else table[0],
                   settings.price_output_per_mtok if settings.price_output_per_mtok >= 0
                   else table[1], read, write)

    def cost(self, response: LLMResponse) -> float:
        """The call's price: cached prompt tokens at the cache's rates, the rest at the
        input price."""
        fresh = response.input_tokens - response.cache_read_tokens - response.cache_write_tokens
        return (max(fresh, 0) * self.input_per_mtok
                + response.cache_read_tokens * self.input_per_mtok * self.cache_read_factor
                + response.cache_write_tokens * self.input_per_mtok * self.cache_write_factor
                + response.output_tokens * self.output_per_mtok) / 1e6

    def price(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_mtok
                + output_tokens * self.output_per_mtok) / 1e6


@dataclass(frozen=True)
class CallRecord:
    """One attempt at one call: the full prompt, the answer or the error, the usage."""

    tag: CallTag
    provider: str
    model: str
    system: str
    messages: tuple[dict[str, str], ...]
    response: str
    error: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_seconds: float
    time: float = field(default_factory=time.time)
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    usage_estimated: bool = False
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"trial": self.tag.trial, "call": self.tag.call, "purpose": self.tag.purpose,
                "proposal_id": self.tag.proposal_id, "provider": self.provider,
                "model": self.model, "system": self.system, "messages": list(self.messages),
                "response": self.response, "error": self.error,
                "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cost_usd": self.cost_usd, "latency_seconds": self.latency_seconds,
                "time": self.time, "cache_read_tokens": self.cache_read_tokens,
                "cache_write_tokens": self.cache_write_tokens,
                "usage_estimated": self.usage_estimated, "notes": list(self.notes)}


class MeteredProvider:
    """Checks the run's budget, claims the call's bound of the principal's daily quota
    (`claim`), calls, records the attempt (success or failure)."""

    def __init__(self, inner: Provider, pricing: Pricing, record: Callable[[CallRecord], None],
                 budget_spent: Callable[[], str], claim: Claim | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.model = inner.model
        self.pricing = pricing
        self.record = record
        self.budget_spent = budget_spent
        self.claim = claim

    def complete(self, request: LLMRequest) -> LLMResponse:
        reason = self.budget_spent()
        if reason:
            raise LLMBudgetSpent(reason)
        if self.claim is None:
            return self._call(request)
        prompt = prompt_tokens(request.system, (m.content for m in request.messages))
        with self.claim(prompt + request.max_tokens,
                        self.pricing.price(prompt, request.max_tokens)):
            return self._call(request)  # recorded before the claim is given back

    def _call(self, request: LLMRequest) -> LLMResponse:
        start = time.monotonic()
        messages = tuple({"role": m.role, "content": m.content} for m in request.messages)
        try:
            response = self.inner.complete(request)
        except LLMError as exc:
            self.record(CallRecord(request.tag, self.name, self.model, request.system,
                                   messages, "", str(exc), 0, 0, 0.0,
                                   time.monotonic() - start))
            raise
        self.record(CallRecord(request.tag, self.name, response.model, request.system,
                               messages, response.text, "", response.input_tokens,
                               response.output_tokens, self.pricing.cost(response),
                               time.monotonic() - start,
                               cache_read_tokens=response.cache_read_tokens,
                               cache_write_tokens=response.cache_write_tokens,
                               usage_estimated=response.usage_estimated,
                               notes=response.notes))
        return response
