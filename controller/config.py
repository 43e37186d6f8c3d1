"""The controller's configuration as typed dataclasses, validated once at the edge.

The TOML file, BILEVEL_<SECTION>__<KEY> environment variables and flags are mapped onto
a ServerConfig by controller/config_file.py, through the one table of keys
(controller/config_keys.py); nothing else reads the environment. Each section is the
settings dataclass of its concept (ExecutorConfig and BackendConfig of the sandbox,
LLMAccess, Limits and LimitCaps, RetentionPolicy, Quotas), and every `validate()` of
them raises the one error of a setting, FieldError naming its key
(controller/errors.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from controller.api.admission import (
    BYTES_KEY,
    DEFAULT_REQUEST_BYTES,
    DEFAULT_STREAMS,
    DEFAULT_STREAMS_PER_CLIENT,
    MAX_MESSAGE_BYTES,
)
from controller.errors import FieldError
from controller.llm.settings import LLMAccess
from controller.principals import check_name
from controller.quotas import Quotas
from controller.research.retention import RetentionPolicy
from controller.sandbox.backend_config import BackendConfig, ExecutorConfig
from controller.sandbox.caps import LimitCaps
from controller.sandbox.spec import RUNTIMES, Limits

TOKEN_ENV = "BILEVEL_TOKEN"
STATE_DIR_ENV = "BILEVEL_STATE_DIR"
DEFAULT_PORT = 50051


class ConfigError(ValueError):
    """The configuration or a command's flags cannot be used: the message says which
    setting and what to do (the CLI prints it and exits 2). `field` names the setting at
    fault, where one is."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field

    @classmethod
    def of(cls, exc: FieldError, where: str = "") -> ConfigError:
        """`exc` said of the setting as its user gave it (`where`: e.g. "--slots", or
        "sandbox.slots (from /etc/bilevel/bilevel.toml)"; default: the key)."""
        return cls(f"{where or exc.field}: {exc.reason}", exc.field)


def default_state_dir() -> Path:
    """$BILEVEL_STATE_DIR, else ./.bilevel if it exists, else ~/.local/share/bilevel."""
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV])
    local = Path.cwd() / ".bilevel"
    if local.is_dir():
        return local
    return Path.home() / ".local" / "share" / "bilevel"


def read_tokens(path: Path | None) -> tuple[str, ...]:
    """Tokens from a file (one per line, # comments) or else from $BILEVEL_TOKEN."""
    if path is not None:
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"--token-file {path}: {exc.strerror}") from None
        tokens = tuple(t.strip() for t in lines if t.strip() and not t.startswith("#"))
        if not tokens:
            raise ConfigError(f"--token-file {path} holds no token")
        return tokens
    env = os.environ.get(TOKEN_ENV, "").strip()
    return (env,) if env else ()


@dataclass(frozen=True)
class TlsConfig:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None  # set: mutual TLS, clients must present a cert
    # For the local health check (`bilevel serve --check`): the CA that signed cert_file
    # (default: cert_file itself, i.e. self-signed) and the name the certificate holds.
    ca_file: Path | None = None
    server_name: str = "localhost"

    def validate(self) -> None:
        for key, path in (("server.tls.cert_file", self.cert_file),
                          ("server.tls.key_file", self.key_file),
                          ("server.tls.client_ca_file", self.client_ca_file),
                          ("server.tls.ca_file", self.ca_file)):
            if path is None:
                continue
            if not path.is_file():
                raise FieldError(key, f"{path}: no such file")
            if not os.access(path, os.R_OK):
                raise FieldError(key, f"{path}: not readable by uid {os.getuid()}; give "
                                      "the controller's user or group read access")


@dataclass(frozen=True)
class AuthConfig:
    """Who may call, beside the shared tokens (`ServerConfig.tokens`, principal
    "shared"): named principals in the state dir's store (`bilevel token create`), in
    `principals_file` (store/principals_file.py), and client certificates mapped to them."""

    principals_file: Path | None = None
    # A verified client certificate's subject CN -> the principal it acts as (mutual TLS
    # only: server.tls.client_ca_file).
    certificates: Mapping[str, str] = field(default_factory=dict)

    def validate(self, tls: TlsConfig | None) -> None:
        if self.principals_file is not None and not self.principals_file.is_file():
            raise FieldError("auth.principals_file", f"{self.principals_file}: no such file")
        if self.certificates and (tls is None or tls.client_ca_file is None):
            raise FieldError("auth.certificates", "maps client certificates, which only a "
                             "server that requires them verifies: set "
                             "server.tls.client_ca_file (--tls-client-ca)")
        for subject, name in self.certificates.items():
            try:
                check_name(name)
            except ValueError as exc:
                raise FieldError(f"auth.certificates.{subject!r}", str(exc)) from None
            if not subject:
                raise FieldError("auth.certificates", "a certificate subject (CN) is empty")


@dataclass(frozen=True)
class ServerConfig:
    # HOST:PORT served over TCP, only where calls authenticate (tcp_address); "": none.
    # Every controller serves its owner over a Unix socket in the state dir as well
    # (controller/api/private_socket.py).
    listen: str = ""
    state_dir: Path = field(default_factory=default_state_dir)
    tokens: tuple[str, ...] = ()
    tls: TlsConfig | None = None
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    execute_queue: int = 8  # Execute calls that may wait for a slot
    max_active_runs: int = 4
    default_limits: Limits = field(default_factory=Limits)
    caps: LimitCaps = field(default_factory=LimitCaps)  # the most a requested job gets
    # Streaming calls open at once (WatchRun, Execute, ...), in all and per client.
    max_streams: int = DEFAULT_STREAMS
    max_streams_per_client: int = DEFAULT_STREAMS_PER_CLIENT
    max_request_bytes_in_flight: int = DEFAULT_REQUEST_BYTES  # Execute/CreateRun bodies
    shutdown_grace_seconds: float = 10.0
    llm: LLMAccess = field(default_factory=LLMAccess)  # API key files, allowed base URLs
    # Which backend runs the jobs (sandbox.backend, --backend: docker or ray).
    backend: BackendConfig = field(default_factory=BackendConfig)
    # Disk budget of the state dir (None: a quarter of its file system, store/disk.py).
    state_dir_max_bytes: int | None = None
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    # Per-principal quotas and fair-share weights ([quotas.*], controller/quotas.py).
    quotas: Quotas = field(default_factory=Quotas)
    auth: AuthConfig = field(default_factory=AuthConfig)
    # Lessons and mechanism verdicts of every principal's runs reach every run's proposer
    # (memory.shared); off: each principal's runs learn from its own runs only.
    shared_memory: bool = False
    # The in-process controller of one command (`bilevel run`, `resume`, `ablate`): it
    # resumes no run when it starts and pauses its runs when it stops, so a run goes on
    # only in the command that asks for it. A service (`bilevel serve`) does both.
    one_shot: bool = False

    def validate(self) -> None:
        """ConfigError naming the first invalid setting (check's FieldError)."""
        try:
            self.check()
        except FieldError as exc:
            raise ConfigError.of(exc) from None

    def check(self) -> None:
        """FieldError naming the key of the first invalid setting."""
        host, _, port = self.listen.rpartition(":")
        if self.listen and (not host or not port.isdigit() or not 0 <= int(port) < 65536):
            raise FieldError("server.listen", f"{self.listen!r}: use HOST:PORT (port 0: any "
                             f"free; e.g. 127.0.0.1:{DEFAULT_PORT})")
        if self.execute_queue < 0:
            raise FieldError("server.execute_queue", "must be >= 0")
        if self.max_active_runs < 1:
            raise FieldError("server.max_runs", "must be >= 1")
        if self.executor.slots < 1:
            raise FieldError("sandbox.slots", "must be >= 1")
        pool = self.executor.pool
        if pool is not None and not (0 <= pool.size <= 64):
            raise FieldError("sandbox.pool_size", f"must be in [0, 64], got {pool.size}")
        if pool is not None and not (0 < pool.idle_seconds <= 24 * 3600):
            raise FieldError("sandbox.pool_idle_seconds", "must be in (0, 86400] seconds")
        if pool is not None and pool.memory_bytes < 0:
            raise FieldError("sandbox.pool_memory_mb", "must be >= 0")
        self.backend.validate()
        if self.executor.runtime not in ("auto", *RUNTIMES):
            raise FieldError("sandbox.runtime", f"{self.executor.runtime!r}: use one of "
                             f"auto, {', '.join(RUNTIMES)}")
        gpu_slots = self.executor.gpu_slots
        if gpu_slots and self.executor.slots != len(gpu_slots):
            raise FieldError("sandbox.slots", f"{self.executor.slots} but sandbox.gpus gives "
                             f"{len(gpu_slots)} GPU slots: with GPUs there is one job slot "
                             "per GPU slot; leave sandbox.slots unset")
        if any(len(t) < 16 for t in self.tokens):
            raise FieldError("tokens", "each must be at least 16 characters (use `openssl "
                             f"rand -hex 32`; server.token_file or ${TOKEN_ENV})")
        if self.state_dir_max_bytes is not None and self.state_dir_max_bytes < 1 << 20:
            raise FieldError("server.state_dir_max_bytes", "must be at least 1MiB (leave it "
                             "unset for a quarter of the state dir's file system)")
        self.retention.validate()
        self.quotas.validate()
        if self.tls is not None:
            self.tls.validate()
        self.auth.validate(self.tls)
        if self.max_streams < 1:
            raise FieldError("server.max_streams", "must be >= 1")
        if self.max_streams_per_client < 1:
            raise FieldError("server.max_streams_per_client", "must be >= 1")
        if self.max_request_bytes_in_flight < MAX_MESSAGE_BYTES:
            raise FieldError(BYTES_KEY, f"{self.max_request_bytes_in_flight}: must be at "
                             f"least {MAX_MESSAGE_BYTES}, the largest request (Execute)")
        self.default_limits.validate()  # the defaults of a request that sets none
        self.caps.validate()
        try:
            self.caps.check(self.default_limits)
        except FieldError as exc:
            raise FieldError(exc.field, f"the default {exc.reason}: lower it in [limits] or "
                             "raise the cap") from None

    def authenticates(self, stored_principals: bool = False) -> bool:
        """Whether a call can name a principal (a token or a mapped certificate): shared
        tokens, a principals file or certificate mapping are configured, or the state
        dir's store defines principals (`stored_principals`). Only then is TCP served
        (tcp_address); a call without a token is the state dir's owner over the private
        Unix socket only (auth.tokenless_principal)."""
        return bool(self.tokens or self.auth.principals_file or self.auth.certificates
                    or stored_principals)

    def tcp_address(self, stored_principals: bool = False) -> str | None:
        """The TCP address to serve (`listen`), or None: the private Unix socket only.
        TCP is never served without authentication, loopback included (any user of
        the host reaches a loopback port): ConfigError naming the fix."""
        if not self.listen:
            return None
        if not self.authenticates(stored_principals):
            raise ConfigError(
                f"--listen {self.listen} (server.listen) serves TCP, which needs "
                "authentication: create a principal (`bilevel token create NAME`), or set "
                f"{TOKEN_ENV} or --token-file; without --listen the controller serves only "
                "its own user, over the Unix socket in its state dir")
        return self.listen
