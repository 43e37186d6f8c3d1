"""API keys: a principal's own key file, else the server's (a file or the environment).
A key is held in an ApiKey whose repr hides it, is handed only to the SDK client, and is
never logged, stored, put in an error or in a sandbox."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from controller.llm.errors import LLMConfigError
from controller.llm.settings import LLMAccess
from controller.principals import check_name

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
    """The key for `provider`: the run owner's own key file where the operator mapped one
    (principal_key_file), else --llm-key-file, else its environment variable. An
    OpenAI-compatible local server (vLLM, Ollama) with a base URL may run without one."""
    own = principal_key_file(access, provider)
    if own is not None:
        return _read_private(own, f"the key of principal {access.owner!r} for {provider}")
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


def principal_key_file(access: LLMAccess, provider: str) -> Path | None:
    """`<llm.principal_key_dir>/<owner>/<provider>` if that file exists (read at each
    use, so an operator adds, replaces or removes a key without a restart), else None."""
    if access.principal_key_dir is None or not access.owner or provider not in KEY_ENV:
        return None
    try:
        check_name(access.owner)  # a path component: no "/", no leading "."
    except ValueError:
        return None
    path = access.principal_key_dir / access.owner / provider
    return path if os.path.lexists(path) else None


def _read_private(path: Path, what: str) -> ApiKey:
    """A key file only the controller's user may read: a regular file (no symlink) owned
    by this uid, with no group or other permission; refused otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise LLMConfigError(f"{what} ({path}): {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or \
                st.st_mode & 0o077:
            raise LLMConfigError(
                f"{what} ({path}) is refused: it must be a regular file owned by the "
                f"controller's uid {os.geteuid()} and readable by it only (chown "
                f"{os.geteuid()} and chmod 600 it); it is uid {st.st_uid}, mode "
                f"{stat.filemode(st.st_mode)}")
        value = os.read(fd, 64 << 10).decode(errors="replace").strip()
    finally:
        os.close(fd)
    if not value:
        raise LLMConfigError(f"{what} ({path}) is empty")
    return ApiKey(value)
