"""Provider-neutral chat requests and responses; every provider maps to and from these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["user", "assistant"]
    content: str


@dataclass(frozen=True)
class CallTag:
    """Who asked: the replay provider finds a stored answer by (trial, call); the store
    files the call under the proposal that made it."""

    run_id: str = ""
    trial: int = 0
    call: int = 0  # 0, 1, ... within one proposal (validation retries count up)
    purpose: str = "propose"  # "propose" or "fix"
    proposal_id: str = ""


@dataclass(frozen=True)
class LLMRequest:
    """`max_tokens` is already bounded for the call's kind (controller/llm/limits.py).
    `response_schema`, a JSON schema, asks servers that support structured output to
    constrain the answer to it; the answer is validated on our side either way.
    `timeout_seconds` overrides the provider's silence timeout for this attempt."""

    system: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int = 1024
    temperature: float | None = None
    tag: CallTag = field(default_factory=CallTag)
    response_schema: dict[str, Any] | None = None
    timeout_seconds: float | None = None


@dataclass(frozen=True)
class LLMResponse:
    """`input_tokens` counts the whole prompt, cached or not; `cache_read_tokens` and
    `cache_write_tokens` are the parts read from and written to the provider's prompt
    cache (priced differently). `usage_estimated`: the server reported no usage, so the
    tokens are estimated from characters. `notes`: what the provider negotiated on the
    way (a request field the server refused), for the call's record."""

    text: str
    input_tokens: int
    output_tokens: int
    model: str
    stop_reason: str = ""
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    usage_estimated: bool = False
    notes: tuple[str, ...] = ()

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class Provider(Protocol):
    """One chat completion. Raises LLMError (retryable or not); never retries itself."""

    name: str
    model: str

    def complete(self, request: LLMRequest) -> LLMResponse: ...
