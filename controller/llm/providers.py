"""The two real providers, each through its official SDK: Anthropic's Messages API and
any OpenAI-compatible chat-completions endpoint (OpenAI, DeepSeek, vLLM, llama.cpp,
Ollama).

Both stream: a slow model that keeps sending tokens is not a timeout; the timeout is the
longest silence allowed (connect, first byte, or between chunks). The SDKs' own retries
are off (max_retries=0): retrying is one policy for all providers
(controller/llm/retry.py), and every attempt is accounted for. SDK errors become
LLMError with `retryable` set the same way for both.

Structured output: an OpenAI-compatible request with a `response_schema` carries
`response_format` (type json_schema), which OpenAI, vLLM and llama.cpp turn into a
constrained decode. A server that refuses the field (HTTP 400/422 naming it) is asked
again without it, and this provider stops sending it. Anthropic's answers are shaped by
the prompt alone. Either way the answer is validated by the caller.
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
        return LLMError(f"{provider} timed out (no data within the timeout)", retryable=True,
                        timed_out=True)
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


def _estimate_tokens(text: str) -> int:
    """About four characters a token: for servers whose stream carries no usage."""
    return max(1, len(text) // 4)


def _names_field(exc: Exception, field: str) -> bool:
    return isinstance(exc, openai.APIStatusError) and exc.status_code in (400, 422) \
        and field in str(exc)


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
        timeout = request.timeout_seconds or self.settings.timeout_seconds
        try:
            with self._client.messages.stream(
                    model=self.model, max_tokens=request.max_tokens, system=request.system,
                    messages=messages, extra_body=extra or None, timeout=timeout) as stream:
                reply = stream.get_final_message()
            text = "".join(block.text for block in reply.content if block.type == "text")
            usage = reply.usage
            return LLMResponse(text=text, input_tokens=int(usage.input_tokens),
                               output_tokens=int(usage.output_tokens), model=reply.model,
                               stop_reason=str(reply.stop_reason or ""))
        except (anthropic.APIError, *MALFORMED, AssertionError, RuntimeError) as exc:
            raise _map_error(self.name, exc) from exc


class OpenAIProvider:
    """OpenAI-compatible chat completions; DeepSeek (the paper's model), vLLM, llama.cpp
    and Ollama speak the same API at their own base URL."""

    name = "openai"

    def __init__(self, settings: LLMSettings, key: ApiKey) -> None:
        self.model = settings.model_name
        self.settings = settings
        self._client = openai.OpenAI(api_key=key.reveal(), base_url=settings.base_url or None,
                                     max_retries=0, timeout=settings.timeout_seconds)
        # Optional request fields this server refused once; never sent to it again.
        self.unsupported: set[str] = set()

    def complete(self, request: LLMRequest) -> LLMResponse:
        for _ in range(3):  # at most one retry per optional field
            try:
                return self._complete(request)
            except openai.APIStatusError as exc:
                refused = next((f for f in ("response_format", "stream_options")
                                if f not in self.unsupported and _names_field(exc, f)), None)
                if refused is None:
                    raise _map_error(self.name, exc) from exc
                self.unsupported.add(refused)
            except (openai.APIError, *MALFORMED) as exc:
                raise _map_error(self.name, exc) from exc
        raise LLMError(f"{self.name} refused every optional field", retryable=False)

    def _complete(self, request: LLMRequest) -> LLMResponse:
        messages: list[Any] = [{"role": "system", "content": request.system}]
        messages += [dict(role=m.role, content=m.content) for m in request.messages]
        kwargs: dict[str, Any] = {}
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.response_schema is not None and "response_format" not in self.unsupported:
            kwargs["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "answer", "schema": request.response_schema, "strict": False}}
        if "stream_options" not in self.unsupported:
            kwargs["stream_options"] = {"include_usage": True}
        stream = self._client.chat.completions.create(
            model=self.model, messages=messages, max_tokens=request.max_tokens, stream=True,
            timeout=request.timeout_seconds or self.settings.timeout_seconds, **kwargs)
        parts: list[str] = []
        finish, model, usage = "", self.model, None
        with stream:
            for chunk in stream:
                model = chunk.model or model
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices:
                    if choice.delta is not None and choice.delta.content:
                        parts.append(choice.delta.content)
                    if choice.finish_reason:
                        finish = str(choice.finish_reason)
        text = "".join(parts)
        if not text and not finish:
            raise ValueError("the stream carried no answer")
        if usage is not None:
            tokens_in, tokens_out = int(usage.prompt_tokens), int(usage.completion_tokens)
        else:  # a server that does not report usage in streams
            prompt_text = "".join(str(m["content"]) for m in messages)
            tokens_in, tokens_out = _estimate_tokens(prompt_text), _estimate_tokens(text)
        return LLMResponse(text=text, input_tokens=tokens_in, output_tokens=tokens_out,
                           model=model, stop_reason=finish)
