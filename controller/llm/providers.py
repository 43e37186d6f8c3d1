"""The two real providers, each through its official SDK: Anthropic's Messages API and
any OpenAI-compatible chat-completions endpoint (OpenAI, DeepSeek, vLLM, Ollama).

The SDKs' own retries are off (max_retries=0): retrying is one policy for all providers
(controller/llm/retry.py), and every attempt is accounted for. SDK errors become
LLMError with `retryable` set the same way for both.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai

from controller.llm.errors import LLMError
from controller.llm.keys import ApiKey
from controller.llm.settings import LLMSettings
from controller.llm.types import LLMRequest, LLMResponse

RETRYABLE_STATUS = frozenset({408, 409, 429})


def _retry_after(headers: Any) -> float | None:
    try:
        raw = headers.get("retry-after") if headers is not None else None
        return float(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


def _map_error(provider: str, exc: Exception) -> LLMError:
    """Rate limits, overload (5xx, Anthropic's 529), timeouts, dropped connections and
    malformed bodies are retryable; other 4xx (bad key, bad request) are not."""
    status_error = (anthropic.APIStatusError, openai.APIStatusError)
    if isinstance(exc, status_error):
        status = exc.status_code
        retryable = status in RETRYABLE_STATUS or status >= 500
        message = f"{provider} answered HTTP {status}: {_short(exc)}"
        if status in (401, 403):
            message += " (check the API key)"
        return LLMError(message, retryable=retryable, status=status,
                        retry_after=_retry_after(exc.response.headers))
    if isinstance(exc, anthropic.APITimeoutError | openai.APITimeoutError):
        return LLMError(f"{provider} timed out", retryable=True)
    if isinstance(exc, anthropic.APIConnectionError | openai.APIConnectionError):
        return LLMError(f"{provider} connection failed: {_short(exc)}", retryable=True)
    # APIResponseValidationError, a JSON body that does not parse, a missing field.
    return LLMError(f"{provider} sent a malformed response: {type(exc).__name__}: "
                    f"{_short(exc)}", retryable=True)


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text[:300]


MALFORMED = (anthropic.APIResponseValidationError, openai.APIResponseValidationError,
             json.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError, ValueError)


class AnthropicProvider:
    name = "anthropic"

    def __init__(self, settings: LLMSettings, key: ApiKey) -> None:
        self.model = settings.model_name
        self.settings = settings
        self._client = anthropic.Anthropic(api_key=key.reveal(),
                                           base_url=settings.base_url or None,
                                           max_retries=0, timeout=settings.timeout_seconds)

    def complete(self, request: LLMRequest) -> LLMResponse:
        extra: dict[str, Any] = {}
        if request.temperature is not None:
            extra["temperature"] = request.temperature
        messages: list[Any] = [dict(role=m.role, content=m.content) for m in request.messages]
        try:
            reply = self._client.messages.create(
                model=self.model, max_tokens=request.max_tokens, system=request.system,
                messages=messages, extra_body=extra or None)
            text = "".join(block.text for block in reply.content if block.type == "text")
            usage = reply.usage
            return LLMResponse(text=text, input_tokens=int(usage.input_tokens),
                               output_tokens=int(usage.output_tokens), model=reply.model,
                               stop_reason=str(reply.stop_reason or ""))
        except (anthropic.APIError, *MALFORMED) as exc:
            raise _map_error(self.name, exc) from exc


class OpenAIProvider:
    """OpenAI-compatible chat completions; DeepSeek (the paper's model), vLLM and Ollama
    speak the same API at their own base URL."""

    name = "openai"

    def __init__(self, settings: LLMSettings, key: ApiKey) -> None:
        self.model = settings.model_name
        self._client = openai.OpenAI(api_key=key.reveal(), base_url=settings.base_url or None,
                                     max_retries=0, timeout=settings.timeout_seconds)

    def complete(self, request: LLMRequest) -> LLMResponse:
        messages: list[Any] = [{"role": "system", "content": request.system}]
        messages += [dict(role=m.role, content=m.content) for m in request.messages]
        kwargs: dict[str, Any] = {}
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        try:
            reply = self._client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=request.max_tokens, **kwargs)
            if not reply.choices:
                raise ValueError("the response has no choices")
            choice = reply.choices[0]
            text = choice.message.content
            if text is None:
                raise ValueError("the first choice has no text content")
            usage = reply.usage
            return LLMResponse(text=text,
                               input_tokens=int(usage.prompt_tokens) if usage else 0,
                               output_tokens=int(usage.completion_tokens) if usage else 0,
                               model=reply.model or self.model,
                               stop_reason=str(choice.finish_reason or ""))
        except (openai.APIError, *MALFORMED) as exc:
            raise _map_error(self.name, exc) from exc
