"""Controller settings as typed dataclasses, built and validated once at the edge (CLI).

The single source of configuration: the TOML file, BILEVEL_<SECTION>__<KEY> environment
variables and flags are merged by controller/config_file.py into a ServerConfig;
nothing else reads the environment.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from controller.api.admission import (
    BYTES_KEY,
    DEFAULT_REQUEST_BYTES,
    DEFAULT_STREAMS,
    DEFAULT_STREAMS_PER_CLIENT,
    MAX_MESSAGE_BYTES,
)
from controller.llm.settings import LLMAccess
from controller.research.retention import RetentionPolicy
from controller.sandbox.backend_config import ExecutorConfig, RayConfig
from controller.sandbox.caps import LimitCaps
from controller.sandbox.spec import RUNTIMES, Limits, SpecError

TOKEN_ENV = "BILEVEL_TOKEN"
STATE_DIR_ENV = "BILEVEL_STATE_DIR"
DEFAULT_PORT = 50051


class ConfigError(ValueError):
    """A setting is invalid; the message names the flag and what would be valid."""


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
        for flag, path in (("--tls-cert", self.cert_file), ("--tls-key", self.key_file),
                           ("--tls-client-ca", self.client_ca_file),
                           ("server.tls.ca_file", self.ca_file)):
            if path is None:
                continue
            if not path.is_file():
                raise ConfigError(f"{flag} {path}: no such file")
            if not os.access(path, os.R_OK):
                raise ConfigError(f"{flag} {path}: not readable by uid {os.getuid()}; give "
                                  "the controller's user or group read access")


@dataclass(frozen=True)
class ServerConfig:
    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
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
    ray: RayConfig | None = None  # --backend ray: jobs run on this Ray cluster's nodes
    # Disk budget of the state dir (None: a quarter of its file system, store/disk.py).
    state_dir_max_bytes: int | None = None
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)

    def validate(self) -> None:
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"--listen {self.listen!r}: use HOST:PORT (port 0: any free)")
        if self.execute_queue < 0:
            raise ConfigError("--execute-queue must be >= 0")
        if self.max_active_runs < 1:
            raise ConfigError("--max-runs must be >= 1")
        if self.executor.slots < 1:
            raise ConfigError("--slots must be >= 1")
        if self.executor.runtime not in ("auto", *RUNTIMES):
            raise ConfigError(f"sandbox.runtime {self.executor.runtime!r}: use one of "
                              f"auto, {', '.join(RUNTIMES)}")
        gpu_slots = self.executor.gpu_slots
        if gpu_slots and self.executor.slots != len(gpu_slots):
            raise ConfigError(f"sandbox.slots = {self.executor.slots} but sandbox.gpus gives "
                              f"{len(gpu_slots)} GPU slots: with GPUs there is one job slot "
                              "per GPU slot; leave sandbox.slots unset")
        if any(len(t) < 16 for t in self.tokens):
            raise ConfigError("tokens must be at least 16 characters (use `openssl rand "
                              "-hex 32`)")
        if self.state_dir_max_bytes is not None and self.state_dir_max_bytes < 1 << 20:
            raise ConfigError("server.state_dir_max_bytes must be at least 1MiB (leave it "
                              "unset for a quarter of the state dir's file system)")
        try:
            self.retention.validate()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.tls is not None:
            self.tls.validate()
        if self.max_streams < 1 or self.max_streams_per_client < 1:
            raise ConfigError("server.max_streams and server.max_streams_per_client must "
                              "be >= 1")
        if self.max_request_bytes_in_flight < MAX_MESSAGE_BYTES:
            raise ConfigError(f"{BYTES_KEY} = {self.max_request_bytes_in_flight}: must be at "
                              f"least {MAX_MESSAGE_BYTES}, the largest request (Execute)")
        try:
            self.default_limits.validate()
        except SpecError as exc:
            raise ConfigError(f"default {exc} (config section [limits])") from None
        try:
            self.caps.validate()
        except SpecError as exc:
            raise ConfigError(str(exc)) from None
        try:
            self.caps.check(self.default_limits)
        except SpecError as exc:
            raise ConfigError(f"default {exc}: lower it in [limits] or raise the cap") \
                from None

    def bind_address(self) -> tuple[str, str | None]:
        """Where to listen, and a warning when no token forces localhost."""
        host, _, port = self.listen.rpartition(":")
        if self.tokens or _is_loopback(host):
            return self.listen, None
        return (f"127.0.0.1:{port}",
                f"no token configured: listening on 127.0.0.1:{port} only, not {self.listen}; "
                f"set {TOKEN_ENV} or --token-file to serve other hosts")


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
