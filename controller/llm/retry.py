"""One retry policy for every provider: exponential backoff with jitter, honouring a
server's retry-after, then a clear terminal error that pauses the run."""

from __future__ import annotations

import random
import threading

import structlog

from controller.llm.errors import LLMError, LLMUnavailable
from controller.llm.types import LLMRequest, LLMResponse, Provider

log = structlog.get_logger(__name__)
MAX_DELAY_SECONDS = 60.0


class RetryingProvider:
    def __init__(self, inner: Provider, max_attempts: int, backoff_seconds: float,
                 stop: threading.Event | None = None) -> None:
        self.inner = inner
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
                wait = self.delay(attempt, exc)
                log.warning("llm call failed; retrying", provider=self.name, error=str(exc),
                            attempt=attempt, retry_in=round(wait, 2))
                if self.stop.wait(wait):
                    raise LLMUnavailable("the controller is stopping") from exc
        raise LLMUnavailable(
            f"{self.name} failed {self.max_attempts} times in a row; last error: {last}. The run"
            " is paused with its state kept: resume it with `bilevel resume RUN`") from last
