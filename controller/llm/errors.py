"""LLM failures. Providers raise LLMError with `retryable` set; the retry layer turns an
exhausted budget into LLMUnavailable, which pauses the run instead of failing it."""

from __future__ import annotations


class LLMError(RuntimeError):
    """One failed call. `status` is the HTTP status when there was one."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None,
                 retry_after: float | None = None, timed_out: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after
        self.timed_out = timed_out  # the server sent nothing for the whole timeout


class LLMUnavailable(RuntimeError):
    """The provider failed for good (retries spent, or a non-retryable error such as a
    bad key). The run pauses with this message; `bilevel resume RUN` continues it."""


class LLMBudgetSpent(RuntimeError):
    """The run's LLM token or cost budget is spent; the run finishes normally."""


class LLMConfigError(ValueError):
    """Settings or credentials are missing or wrong; says what to set."""
