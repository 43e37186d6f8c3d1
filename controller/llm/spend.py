"""A principal's LLM spend per day (`quotas.*.llm_tokens_per_day`, `llm_usd_per_day`),
checked and claimed before each call.

"Per day" is any 24 hours: the calls recorded in the last WINDOW_SECONDS (all of the
principal's runs, from the llm_calls table) plus the calls in flight now. A call in
flight counts at its bound until its usage is recorded: its `max_tokens` of output and
its prompt estimated at PROMPT_CHARS_PER_TOKEN, priced as the run prices its calls. A
call starts only if that bound fits what is left, and the check and the claim are one
step under a lock, so concurrent calls of one principal cannot all pass a quota that
has room for one. A call refused raises LLMQuotaSpent: the run pauses with the quota,
the limit and the use in its reason (`bilevel resume RUN` once the window has room);
Levels 1.5 and 2 skip their step.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from controller.llm.errors import LLMUnavailable
from controller.quotas import Quotas

WINDOW_SECONDS = 24 * 3600.0
PROMPT_CHARS_PER_TOKEN = 3  # a prompt's tokens, estimated from its characters (generous)

# (principal, since) -> (tokens, USD) its recorded calls used since that time.
Usage = Callable[[str, float], tuple[int, float]]


class LLMQuotaSpent(LLMUnavailable):
    """The principal's daily LLM quota has no room for the call; the run pauses."""


@dataclass
class _InFlight:
    tokens: int = 0
    usd: float = 0.0


class DailySpend:
    """Thread-safe; one per controller (every run of a principal shares its quota)."""

    def __init__(self, quotas: Quotas, usage: Usage,
                 clock: Callable[[], float] = time.time) -> None:
        self.quotas = quotas
        self.usage = usage
        self.clock = clock
        self._in_flight: dict[str, _InFlight] = {}
        self._lock = threading.Lock()

    def limited(self, principal: str) -> bool:
        limits = self.quotas.of(principal)
        return limits.llm_tokens_per_day is not None or limits.llm_usd_per_day is not None

    @contextlib.contextmanager
    def claim(self, principal: str, tokens: int, usd: float) -> Iterator[None]:
        """Hold `tokens` and `usd` of the principal's quota for the body (the call and
        the recording of its usage); LLMQuotaSpent when they do not fit."""
        if not self.limited(principal):
            yield
            return
        limits = self.quotas.of(principal)
        with self._lock:
            used_tokens, used_usd = self.usage(principal, self.clock() - WINDOW_SECONDS)
            held = self._in_flight.setdefault(principal, _InFlight())
            for quota, limit, used, want, unit in (
                    ("llm_tokens_per_day", limits.llm_tokens_per_day,
                     used_tokens + held.tokens, tokens, " tokens"),
                    ("llm_usd_per_day", limits.llm_usd_per_day, used_usd + held.usd, usd,
                     " USD")):
                if limit is not None and used + want > limit:
                    raise LLMQuotaSpent(str(self.quotas.refusal(principal, quota, used, want,
                                                                unit)))
            held.tokens += tokens
            held.usd += usd
        try:
            yield
        finally:
            with self._lock:
                held.tokens -= tokens
                held.usd -= usd


def prompt_tokens(system: str, messages: Iterator[str]) -> int:
    """The bound a prompt is counted at before its call returns its real size."""
    chars = len(system) + sum(len(m) for m in messages)
    return -(-chars // PROMPT_CHARS_PER_TOKEN)
