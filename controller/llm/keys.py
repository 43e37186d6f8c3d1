"""API keys from a file or the environment. A key is held in an ApiKey whose repr hides
it, is handed only to the SDK client, and is never logged, stored or put in a sandbox."""

from __future__ import annotations

import os
from pathlib import Path

from controller.llm.errors import LLMConfigError
from controller.llm.settings import LLMAccess

KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}


class ApiKey:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "ApiKey(<hidden>)"

    __str__ = __repr__


def resolve_key(provider: str, access: LLMAccess, base_url: str) -> ApiKey:
    """The key for `provider`: --llm-key-file first, then its environment variable. An
    OpenAI-compatible local server (vLLM, Ollama) with a base URL may run without one."""
    path = access.key_file(provider)
    if path is not None:
        try:
            value = Path(path).read_text().strip()
        except OSError as exc:
            raise LLMConfigError(f"--llm-key-file {provider}={path}: {exc.strerror}") from None
        if not value:
            raise LLMConfigError(f"--llm-key-file {provider}={path} is empty")
        return ApiKey(value)
    env = KEY_ENV.get(provider, "")
    value = os.environ.get(env, "").strip() if env else ""
    if value:
        return ApiKey(value)
    if provider == "openai" and base_url:
        return ApiKey("no-key")  # local OpenAI-compatible servers ignore it
    raise LLMConfigError(f"no API key for provider {provider}: set {env or 'a key'} in the "
                         f"controller's environment or start it with --llm-key-file "
                         f"{provider}=PATH")
