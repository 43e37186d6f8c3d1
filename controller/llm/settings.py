"""LLM settings: per run (which provider and model, retries, prices) and per controller
(where API keys come from, which base URLs may receive them)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

from controller.errors import FieldError

PROVIDERS = ("anthropic", "openai", "replay")
DEFAULT_MODELS = {"anthropic": "claude-sonnet-5-5"}


@dataclass(frozen=True)
class LLMSettings:
    """How a run talks to its LLM. Only used when the proposer kind is "llm"."""

    provider: str = "anthropic"
    model: str = ""  # "" -> the provider's default (anthropic: claude-sonnet-5-5)
    base_url: str = ""  # "" -> the SDK's default endpoint
    max_tokens: int = 4096  # cap per response; each call kind asks for less (llm/limits.py)
    temperature: float = -1.0  # < 0: the provider's default
    timeout_seconds: float = 120.0  # per HTTP attempt
    max_attempts: int = 6  # per call, the first try included
    backoff_seconds: float = 2.0  # first retry delay; doubles, capped at 60 s
    replay_run: str = ""  # provider "replay": the run whose stored answers are replayed
    price_input_per_mtok: float = -1.0  # USD per million tokens; < 0: built-in table
    price_output_per_mtok: float = -1.0

    @property
    def model_name(self) -> str:
        return self.model or DEFAULT_MODELS.get(self.provider, "")

    def validate(self) -> None:
        if self.provider not in PROVIDERS:
            raise FieldError("llm.provider", f"must be one of {PROVIDERS}, got {self.provider!r}")
        if self.provider == "openai" and not self.model:
            raise FieldError("llm.model", "is required for provider openai (e.g. deepseek-chat "
                             "with --base-url https://api.deepseek.com)")
        if self.provider == "replay" and not self.replay_run:
            raise FieldError("llm.replay_run", "names the run to replay (provider replay)")
        if self.base_url:
            url = urlparse(self.base_url)
            if url.scheme not in ("http", "https") or not url.netloc:
                raise FieldError("llm.base_url", f"must be an http(s) URL, got {self.base_url!r}")
        if not 16 <= self.max_tokens <= 200_000:
            raise FieldError("llm.max_tokens", f"must be in [16, 200000], got {self.max_tokens}")
        if not math.isfinite(self.temperature) or self.temperature > 2:
            raise FieldError("llm.temperature", "must be <= 2 (< 0: provider default)")
        if not (math.isfinite(self.timeout_seconds) and 0.1 <= self.timeout_seconds <= 3600):
            raise FieldError("llm.timeout_seconds", "must be in [0.1, 3600]")
        if not 1 <= self.max_attempts <= 50:
            raise FieldError("llm.max_attempts", f"must be in [1, 50], got {self.max_attempts}")
        if not (math.isfinite(self.backoff_seconds) and 0 <= self.backoff_seconds <= 600):
            raise FieldError("llm.backoff_seconds", "must be in [0, 600]")
        for name in ("price_input_per_mtok", "price_output_per_mtok"):
            if not math.isfinite(getattr(self, name)):
                raise FieldError(f"llm.{name}", "must be a number (< 0: built-in table)")


@dataclass(frozen=True)
class LLMAccess:
    """The controller's side: API keys never travel in a run request. A run may name a
    base URL only if the operator allows it (the key is sent there), whoever calls.

    A principal's own key, where the operator mapped one, is the file
    `<principal_key_dir>/<principal>/<provider>` (controller/llm/keys.py); a run of that
    principal uses it, and any other run the server's key."""

    key_files: tuple[tuple[str, Path], ...] = ()  # (provider, file holding the key)
    allowed_base_urls: tuple[str, ...] = ()
    principal_key_dir: Path | None = None
    owner: str = ""  # the principal whose run this access is for ("": none, server keys)

    def key_file(self, provider: str) -> Path | None:
        return next((path for name, path in self.key_files if name == provider), None)

    def for_owner(self, owner: str) -> LLMAccess:
        """This access for a run of `owner`: its own key file first, where mapped."""
        return replace(self, owner=owner)

    def allowing(self, *base_urls: str) -> LLMAccess:
        """This access with more allowed base URLs (the operator's own flags)."""
        added = tuple(u for u in base_urls if u and u not in self.allowed_base_urls)
        return replace(self, allowed_base_urls=self.allowed_base_urls + added)

    def check_base_url(self, base_url: str) -> None:
        if base_url and base_url.rstrip("/") not in {u.rstrip("/") for u in
                                                     self.allowed_base_urls}:
            raise FieldError("llm.base_url", f"{base_url!r} is not allowed by this controller; "
                             "its operator allows a URL with --llm-base-url URL or "
                             "llm.allowed_base_urls (the API key is sent there)")
