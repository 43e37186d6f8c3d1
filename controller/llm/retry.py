"""One retry policy for every provider: exponential backoff with jitter, honouring a
server's retry-after, then a clear terminal error that pauses the run.

A timed-out attempt is not repeated identically: the next one allows twice the silence
(a slow prefill of a long prompt) and asks for half the tokens (a server that only
answers at the end), within bounds."""

from __future__ import annotations

import random
import threading
from dataclasses import replace

import structlog

from controller.llm.errors import LLMError, LLMUnavailable
from controller.llm.limits import MIN_RETRY_TOKENS
from controller.llm.types import LLMRequest, LLMResponse, Provider

log = structlog.get_logger(__name__)
MAX_DELAY_SECONDS = 60.0
MAX_TIMEOUT_SECONDS = 3600.0


def after_timeout(request: LLMRequest, timeout_seconds: float) -> LLMRequest:
    """The next attempt after `request` timed out with `timeout_seconds` of silence."""
    tokens = max(min(MIN_RETRY_TOKENS, request.max_tokens), request.max_tokens // 2)
    return replace(request, max_tokens=tokens,
                   timeout_seconds=min(MAX_TIMEOUT_SECONDS, 2 * timeout_seconds))


class RetryingProvider:
    def __init__(self, inner: Provider, max_attempts: int, backoff_seconds: float,
                 stop: threading.Event | None = None, timeout_seconds: float = 120.0) -> None:
        self.inner = inner
        self.timeout_seconds = timeout_seconds
        self.name = inner.name
        self.model = inner.model
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.stop = stop or threading.Event()
        self._rng = random.Random()

    def delay(self, attempt: int, error: LLMError) -> float:
        """Seconds before retry `attempt` (1-based): doubling, jittered, at least the
        server's retry-after, at most a minute."""
        base = self.backoff_seconds * 2 ** (attempt - 1) * self._rng.uniform(0.5, 1.0)
        if error.retry_after is not None:
            base = max(base, error.retry_after)
        return float(min(base, MAX_DELAY_SECONDS))

    def complete(self, request: LLMRequest) -> LLMResponse:
        last: LLMError | None = None
        for attempt in range(1, self.max_attempts + 1):
            try:
                return self.inner.complete(request)
            except LLMError as exc:
                last = exc
                if not exc.retryable:
                    raise LLMUnavailable(f"{exc} (not retryable); fix the cause, then resume "
                                         "the run with `bilevel resume RUN`") from exc
                if attempt == self.max_attempts:
                    break
                if exc.timed_out:
                    request = after_timeout(request,
                                            request.timeout_seconds or self.timeout_seconds)
                wait = self.delay(attempt, exc)
                log.warning("llm call failed; retrying", provider=self.name, error=str(exc),
                            attempt=attempt, retry_in=round(wait, 2))
                if self.stop.wait(wait):
                    raise LLMUnavailable("the controller is stopping") from exc
        raise LLMUnavailable(
            f"{self.name} failed {self.max_attempts} times in a row; last error: {last}. The run"
            " is paused with its state kept: resume it with `bilevel resume RUN`") from last
