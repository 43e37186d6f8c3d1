"""The two real providers, each through its official SDK: Anthropic's Messages API and
any OpenAI-compatible chat-completions endpoint (OpenAI, DeepSeek, vLLM, llama.cpp,
Ollama).

Both stream: a slow model that keeps sending tokens is not a timeout; the timeout is the
longest silence allowed (connect, first byte, or between chunks). The SDKs' own retries
are off (max_retries=0): retrying is one policy for all providers
(controller/llm/retry.py), and every attempt is accounted for. SDK errors become
LLMError with `retryable` set the same way for both.

Structured output: an OpenAI-compatible request with a `response_schema` asks for it in
the strongest form the endpoint takes (controller/llm/capabilities.py): a server that
refuses a request field - 400, 422 or a 500 whose body names it - is asked again one
step down, never with the identical request, and the step is remembered per base URL and
model. Anthropic's answers are shaped by the prompt alone. Either way the answer is
validated by the caller.

Prompt caching: the system prompt is the stable prefix of every call of a run (the task,
the answer format, the knobs or the code); Anthropic's request marks it with
`cache_control`, and OpenAI-compatible servers cache a repeated prefix on their own. The
tokens read from and written to the cache come back in the response, for pricing.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import anthropic
import openai
import structlog
from anthropic.types import CacheControlEphemeralParam, TextBlockParam

from controller.llm import endpoint_gate
from controller.llm.capabilities import Capabilities, CapabilityMemory
from controller.llm.errors import LLMError
from controller.llm.keys import ApiKey
from controller.llm.settings import LLMSettings
from controller.llm.types import LLMRequest, LLMResponse

log = structlog.get_logger(__name__)
RETRYABLE_STATUS = frozenset({408, 409, 429})
# Request fields a server's refusal may name; naming one makes an error a request error
# (not transient), whatever its status.
REQUEST_FIELDS = ("response_format", "stream_options", "temperature", "max_tokens",
                  "messages", "model", "stream")


def _retry_after(headers: Any) -> float | None:
    try:
        raw = headers.get("retry-after") if headers is not None else None
        return float(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


def named_field(exc: Exception) -> str | None:
    """The request field a refusal names: a 400/422, or a 5xx whose body is a request
    validation error (llama.cpp's server answers 500 with pydantic's `'loc': ('body',
    'response_format', ...)`). None for anything else."""
    if not isinstance(exc, anthropic.APIStatusError | openai.APIStatusError):
        return None
    text = str(exc)
    if exc.status_code >= 500 and not ("'body'" in text or '"body"' in text
                                       or "validation" in text.lower()):
        return None
    if exc.status_code < 500 and exc.status_code not in (400, 422):
        return None
    return next((f for f in REQUEST_FIELDS if f in text), None)


def _overflow(text: str) -> bool:
    low = text.lower()
    return "context" in low and any(w in low for w in ("exceed", "length", "too long",
                                                       "maximum"))


def _map_error(provider: str, exc: Exception) -> LLMError:
    """Rate limits, overload (5xx, Anthropic's 529), timeouts, dropped connections and
    malformed bodies are retryable; other 4xx (bad key, bad request), a prompt past the
    model's context, and any error that names a request field are not: repeating the
    identical request cannot succeed."""
    status_error = (anthropic.APIStatusError, openai.APIStatusError)
    if isinstance(exc, status_error):
        status = exc.status_code
        field = named_field(exc)
        retryable = (status in RETRYABLE_STATUS or status >= 500) and field is None
        message = f"{provider} answered HTTP {status}: {_short(exc)}"
        if status in (401, 403):
            message += " (check the API key)"
        if _overflow(str(exc)):
            retryable = False
            message = (f"{provider}: the prompt does not fit the model's context window "
                       f"(HTTP {status}: {_short(exc)})")
        elif field is not None:
            message += f" (the server refused the request field {field!r})"
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


class CutShort(ValueError):
    """A streamed answer that ended without a finish reason."""


def anthropic_system(system: str) -> list[TextBlockParam]:
    """The system prompt as one text block marked for Anthropic's prompt cache: it is the
    stable prefix of every call (a prefix shorter than the model's minimum is simply not
    cached)."""
    return [TextBlockParam(type="text", text=system,
                           cache_control=CacheControlEphemeralParam(type="ephemeral"))]


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
                    model=self.model, max_tokens=request.max_tokens,
                    system=anthropic_system(request.system), messages=messages,
                    extra_body=extra or None, timeout=timeout) as stream:
                reply = stream.get_final_message()
            text = "".join(block.text for block in reply.content if block.type == "text")
            usage = reply.usage
            read = int(getattr(usage, "cache_read_input_tokens", None) or 0)
            written = int(getattr(usage, "cache_creation_input_tokens", None) or 0)
            return LLMResponse(text=text, input_tokens=int(usage.input_tokens) + read + written,
                               output_tokens=int(usage.output_tokens), model=reply.model,
                               stop_reason=str(reply.stop_reason or ""),
                               cache_read_tokens=read, cache_write_tokens=written)
        except (anthropic.APIError, *MALFORMED, AssertionError, RuntimeError) as exc:
            raise _map_error(self.name, exc) from exc


class OpenAIProvider:
    """OpenAI-compatible chat completions; DeepSeek (the paper's model), vLLM, llama.cpp
    and Ollama speak the same API at their own base URL."""

    name = "openai"

    def __init__(self, settings: LLMSettings, key: ApiKey,
                 memory: CapabilityMemory | None = None) -> None:
        self.model = settings.model_name
        self.settings = settings
        self._client = openai.OpenAI(api_key=key.reveal(), base_url=settings.base_url or None,
                                     max_retries=0, timeout=settings.timeout_seconds)
        self.endpoint = settings.base_url or "https://api.openai.com/v1"
        self.memory = memory
        self.gate = endpoint_gate.gate(self.endpoint, self.model)
        if memory is not None:  # what an earlier run (or controller) learned
            self.gate.capabilities = self.gate.capabilities.meet(
                Capabilities.from_mapping(memory.get(self.endpoint, self.model)))

    @property
    def capabilities(self) -> Capabilities:
        return self.gate.capabilities

    def complete(self, request: LLMRequest) -> LLMResponse:
        notes: list[str] = []
        alone = False  # retried one at a time after an interrupted stream
        while True:
            try:
                with self.gate.call() as call:
                    try:
                        response = self._complete(request)
                    except CutShort as exc:
                        if not call.overlapped or alone:
                            raise
                        alone = True
                        notes.append(self._one_at_a_time(exc))
                        continue  # again, now alone: not the identical situation
                return replace(response, notes=tuple(notes)) if notes else response
            except openai.APIStatusError as exc:
                field = named_field(exc)
                lower = self.capabilities.without(field) if field else None
                if lower is None or (field == "response_format"
                                     and request.response_schema is None):
                    raise _map_error(self.name, exc) from exc
                notes.append(self._step_down(lower, field or "", exc))
            except (openai.APIError, *MALFORMED) as exc:
                raise _map_error(self.name, exc) from exc

    def _one_at_a_time(self, exc: CutShort) -> str:
        note = ("the server cut a streamed answer short while another call was in flight "
                "(llama.cpp's interrupt_requests); calls to it now go one at a time")
        if self.capabilities.concurrent:  # else another provider found it out already
            log.warning("llm endpoint drops concurrent streams; serialising its calls",
                        endpoint=self.endpoint, model=self.model, detail=str(exc))
            self._learn(replace(self.capabilities, concurrent=False), f"{note}: {exc}")
        return note

    def _step_down(self, lower: Capabilities, field: str, exc: openai.APIStatusError) -> str:
        note = (f"the server refused {field} (HTTP {exc.status_code}); structured output "
                f"{self.capabilities.structured} -> {lower.structured}, usage in streams "
                f"{'on' if lower.stream_usage else 'off'}")
        log.warning("llm endpoint refused a request field; asking one step down",
                    endpoint=self.endpoint, model=self.model, field=field,
                    status=exc.status_code, structured=lower.structured)
        self._learn(lower, f"{note}: {_short(exc)}")
        return note

    def _learn(self, lower: Capabilities, reason: str) -> None:
        """One place for what the endpoint accepts: shared with the endpoint's other
        providers in this process, and kept in the store for later runs."""
        self.gate.capabilities = self.gate.capabilities.meet(lower)
        if self.memory is not None:
            self.memory.put(self.endpoint, self.model, self.capabilities.as_mapping(), reason)

    def _structured(self, request: LLMRequest) -> tuple[dict[str, Any], str]:
        """(request kwargs, text added to the system prompt) for the answer's schema."""
        schema = request.response_schema
        if schema is None:
            return {}, ""
        step = self.capabilities.structured
        if step == "json_schema":
            return {"response_format": {"type": "json_schema", "json_schema": {
                "name": "answer", "schema": schema, "strict": False}}}, ""
        if step == "json_object+schema":
            return {"response_format": {"type": "json_object", "schema": schema}}, ""
        prompt = ("\n\nAnswer with one JSON object that matches this JSON Schema:\n"
                  + json.dumps(schema, separators=(",", ":")))
        if step == "json_object":
            return {"response_format": {"type": "json_object"}}, prompt
        return {}, prompt

    def _complete(self, request: LLMRequest) -> LLMResponse:
        kwargs, schema_text = self._structured(request)
        messages: list[Any] = [{"role": "system", "content": request.system + schema_text}]
        messages += [dict(role=m.role, content=m.content) for m in request.messages]
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if self.capabilities.stream_usage:
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

        def prompt_estimate() -> int:  # only where the server gave no usage or no answer
            return _estimate_tokens("".join(str(m["content"]) for m in messages))

        if not finish:  # cut short: never taken for an answer (retried as malformed)
            raise CutShort(
                f"the stream ended without a finish reason after {len(text)} characters, "
                f"for a prompt of about {prompt_estimate()} tokens (llama.cpp's "
                "server does this when the prompt does not fit the model's context window, "
                "or when another request interrupts it)")
        if usage is not None:
            details = getattr(usage, "prompt_tokens_details", None)
            cached = int(getattr(details, "cached_tokens", None) or 0) if details else 0
            return LLMResponse(text=text, input_tokens=int(usage.prompt_tokens),
                               output_tokens=int(usage.completion_tokens), model=model,
                               stop_reason=finish, cache_read_tokens=cached)
        # A server that does not report usage in streams: estimated, and marked so.
        return LLMResponse(text=text, input_tokens=prompt_estimate(),
                           output_tokens=_estimate_tokens(text), model=model,
                           stop_reason=finish, usage_estimated=True)
