"""The one place the controller's settings are read: built-in defaults, the config file
(TOML), the environment and the command line, mapped onto ServerConfig (config.py)
through the table of keys (config_keys.py).

Precedence, lowest first: built-in defaults, the file (--config or $BILEVEL_CONFIG),
environment variables BILEVEL_<SECTION>__<KEY> (BILEVEL_SANDBOX__GPUS=0,1;
BILEVEL_SERVER__TLS__CERT_FILE=...), then flags given on the command line (a repeatable
flag adds to the list the file gives). Every key is known and typed: a typo, a wrong
type or an invalid value stops the controller at start with a ConfigError naming the
key (or the flag), where the value came from and what would be valid.
deploy/bilevel.toml documents the keys.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller import quotas
from controller.api.admission import (
    DEFAULT_REQUEST_BYTES,
    DEFAULT_STREAMS,
    DEFAULT_STREAMS_PER_CLIENT,
)
from controller.config import (
    STATE_DIR_ENV,
    AuthConfig,
    ConfigError,
    ServerConfig,
    TlsConfig,
    default_state_dir,
    read_tokens,
)
from controller.config_keys import ENV_PREFIX, KEYS, flag_of, kind_of
from controller.errors import FieldError
from controller.llm.keys import KEY_ENV
from controller.llm.settings import LLMAccess
from controller.research.retention import RetentionPolicy
from controller.sandbox.backend_config import BackendConfig, ExecutorConfig, PoolConfig
from controller.sandbox.caps import LimitCaps
from controller.sandbox.gpus import GpuConfigError, GpuSlot, discover_on, parse_slot_list
from controller.sandbox.spec import Limits

CONFIG_ENV = "BILEVEL_CONFIG"
COMMAND_LINE = "command line"
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20,
          "mb": 1000**2, "mib": 1 << 20, "g": 1 << 30, "gb": 1000**3, "gib": 1 << 30,
          "t": 1 << 40, "tb": 1000**4, "tib": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")

Discover = Callable[[str | None, str | None], tuple[GpuSlot, ...]]


@dataclass(frozen=True)
class Value:
    value: Any
    origin: str  # where it came from, for error messages


def where(key: str, origin: str = "") -> str:
    """A setting as its user gave it: the flag, or the key and where its value came from
    (`origin`; "": none gave it, and the key is named with its flag)."""
    flag = flag_of(key)
    if origin == COMMAND_LINE and flag:
        return flag
    if origin:
        return f"{key} (from {origin})"
    return f"{key} ({flag})" if flag else key


def _unknown(key: str, origin: str) -> ConfigError:
    if key.startswith(quotas.PREFIX):
        return ConfigError(f"{origin}: unknown setting {key}: {quotas.unknown_reason(key)}")
    close = difflib.get_close_matches(key, KEYS, n=1)
    hint = f"; did you mean {close[0]}?" if close else f"; known keys: {', '.join(KEYS)}"
    return ConfigError(f"{origin}: unknown setting {key}{hint}")


def _coerce(key: str, raw: Any, origin: str) -> Any:
    """The typed value of `raw` for `key`; env values arrive as strings."""
    kind = kind_of(key)
    assert kind is not None, key
    if isinstance(raw, str) and kind not in ("str", "gpus", "list", "table") and \
            raw.strip() == "":
        return None  # an empty env value or "" in the file unsets an optional setting
    try:
        if kind == "str":
            if not isinstance(raw, str):
                raise TypeError
            return raw
        if kind == "path":
            if not isinstance(raw, str):
                raise TypeError
            return Path(raw)
        if kind == "int":
            if isinstance(raw, bool) or not isinstance(raw, int | str):
                raise TypeError
            return int(raw)
        if kind == "float":
            if isinstance(raw, bool) or not isinstance(raw, int | float | str):
                raise TypeError
            return float(raw)
        if kind == "bool":
            if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
                return raw.strip().lower() == "true"
            if not isinstance(raw, bool):
                raise TypeError
            return raw
        if kind == "bytes":
            return _size(raw)
        if kind == "table":
            return _table(raw)
        if kind == "list":
            items = raw.split(",") if isinstance(raw, str) else raw
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise TypeError
            return tuple(i.strip() for i in items if i.strip())
        return _gpus(raw, f"{key} (from {origin})")
    except ConfigError:
        raise
    except (TypeError, ValueError):
        raise ConfigError(f"{where(key, origin)}: {raw!r} is not a valid "
                          f"{_KIND_HELP[kind]}", key) from None


_KIND_HELP = {"str": "string", "path": "path (string)", "int": "integer",
              "float": "number", "bool": "boolean (true or false)",
              "bytes": "size (bytes, or e.g. \"512MiB\", \"2GiB\")",
              "list": "list of strings (env: comma-separated)",
              "table": "table of strings (env: key=value,key=value; a flag: key=value)",
              "gpus": "GPU setting (\"none\", \"auto\" or a list like [\"0\", \"1\"])"}


def _size(raw: Any) -> int:
    if isinstance(raw, bool):
        raise TypeError
    if isinstance(raw, int):
        return raw
    match = _SIZE.match(str(raw))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _table(raw: Any) -> dict[str, str]:
    if isinstance(raw, str):
        pairs = [item.partition("=") for item in raw.split(",") if item.strip()]
        if any(not sep or not k.strip() or not v.strip() for k, sep, v in pairs):
            raise ValueError
        return {k.strip(): v.strip() for k, _, v in pairs}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise TypeError
    return dict(raw)


def _gpus(raw: Any, at: str) -> str | tuple[GpuSlot, ...]:
    if isinstance(raw, str) and raw.strip().lower() in ("none", "auto"):
        return raw.strip().lower()
    entries = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(entries, list) or not all(isinstance(e, str | int) for e in entries):
        raise TypeError
    try:
        return parse_slot_list((str(e) for e in entries), at)
    except GpuConfigError as exc:
        raise ConfigError(str(exc), "sandbox.gpus") from None


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in table.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and key not in KEYS:
            out.update(_flatten(value, key + "."))
        else:
            out[key] = value
    return out


def read_file(path: Path) -> dict[str, Value]:
    try:
        with path.open("rb") as handle:
            table = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: no such file (set --config or "
                          f"${CONFIG_ENV}, or start from deploy/bilevel.toml)") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    values = {}
    for key, raw in _flatten(table).items():
        if kind_of(key) is None:
            raise _unknown(key, str(path))
        values[key] = Value(_coerce(key, raw, str(path)), str(path))
    return values


def read_env(environ: Mapping[str, str]) -> dict[str, Value]:
    values = {}
    if environ.get(STATE_DIR_ENV):  # the older, shorter name of server.state_dir
        values["server.state_dir"] = Value(Path(environ[STATE_DIR_ENV]), STATE_DIR_ENV)
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        key = name[len(ENV_PREFIX):].lower().replace("__", ".")
        if kind_of(key) is None:
            raise _unknown(key, f"environment variable {name}")
        values[key] = Value(_coerce(key, raw, name), name)
    return values


def flag_values(flags: Mapping[str, Any]) -> dict[str, Value]:
    """Flags given on the command line ({key: value}, None or [] meaning not given); a
    repeatable flag's values are a list."""
    out = {}
    for key, value in flags.items():
        if value is None or value == []:
            continue
        if isinstance(value, list) and kind_of(key) == "table":
            pairs = [_coerce(key, item, COMMAND_LINE) for item in value]
            value = {k: v for pair in pairs for k, v in pair.items()}
        elif isinstance(value, str | list):
            value = _coerce(key, value, COMMAND_LINE)
        out[key] = Value(value, COMMAND_LINE)
    return out


def _merge(lower: Value | None, flag: Value) -> Value:
    """A repeatable flag adds to the list the file or environment gives: key files of
    the command line first, base URLs after the configured ones."""
    if lower is None or lower.value is None:
        return flag
    if isinstance(flag.value, dict):
        return Value({**lower.value, **flag.value}, f"{lower.origin} and {COMMAND_LINE}")
    added = tuple(v for v in flag.value if v not in lower.value)
    return Value(tuple(lower.value) + added, f"{lower.origin} and {COMMAND_LINE}")


def load(config_path: Path | None, environ: Mapping[str, str],
         flags: Mapping[str, Any], discover_gpus: Discover | None = None) -> ServerConfig:
    """The validated ServerConfig from file, environment and flags (see module doc)."""
    if config_path is None and environ.get(CONFIG_ENV):
        config_path = Path(environ[CONFIG_ENV])
    merged: dict[str, Value] = {}
    if config_path is not None:
        merged.update(read_file(config_path))
    merged.update(read_env(environ))
    for key, flag in flag_values(flags).items():
        setting = KEYS.get(key)
        merged[key] = _merge(merged.get(key), flag) if setting and setting.repeat else flag
    try:
        config = build(merged, discover_gpus or discover_on)
        config.check()
    except FieldError as exc:
        found = merged.get(exc.field)
        raise ConfigError.of(exc, where(exc.field, found.origin if found else "")) from None
    return config


def build(values: Mapping[str, Value], discover_gpus: Discover) -> ServerConfig:
    """The ServerConfig the values give (not validated: ServerConfig.check). FieldError
    names a key whose value cannot be used at all."""
    def get(key: str, default: Any = None) -> Any:
        found = values.get(key)
        return default if found is None or found.value is None else found.value

    tls = None
    cert, key = get("server.tls.cert_file"), get("server.tls.key_file")
    if cert or key:
        if not (cert and key):
            raise FieldError("server.tls.key_file" if cert else "server.tls.cert_file",
                             "server.tls.cert_file (--tls-cert) and server.tls.key_file "
                             "(--tls-key) go together")
        tls = TlsConfig(cert, key, get("server.tls.client_ca_file"),
                        ca_file=get("server.tls.ca_file"),
                        server_name=get("server.tls.server_name", "localhost"))
    elif get("server.tls.client_ca_file"):
        raise FieldError("server.tls.client_ca_file", "needs server.tls.cert_file and "
                         "server.tls.key_file (--tls-cert, --tls-key)")
    token_file = get("server.token_file")
    tokens = read_tokens(token_file) if token_file else read_tokens(None)
    gpu_slots = _gpu_slots(values, get("sandbox.docker_url"), get("sandbox.image"),
                           discover_gpus)
    slots = get("sandbox.slots", len(gpu_slots) if gpu_slots else 2)
    executor = ExecutorConfig(
        image=get("sandbox.image"), slots=slots, namespace=get("sandbox.namespace", "default"),
        docker_url=get("sandbox.docker_url"), allowed_images=get("sandbox.allowed_images", ()),
        runtime=get("sandbox.runtime", "auto"), gpu_slots=gpu_slots,
        pool=PoolConfig(size=get("sandbox.pool_size", slots),
                        memory_bytes=get("sandbox.pool_memory_mb", 8192) << 20,
                        idle_seconds=get("sandbox.pool_idle_seconds", 120.0)))
    limit_fields = {name.split(".")[1]: found.value for name, found in values.items()
                    if name.startswith("limits.") and found.value is not None}
    cap_fields = {name.removeprefix("sandbox.max_"): found.value
                  for name, found in values.items()
                  if name.startswith("sandbox.max_") and found.value is not None}
    return ServerConfig(
        listen=get("server.listen", ""),
        state_dir=get("server.state_dir") or default_state_dir(),
        tokens=tokens, tls=tls, executor=executor,
        backend=BackendConfig.of(get("sandbox.backend"), get("sandbox.ray_address")),
        execute_queue=get("server.execute_queue", 8),
        max_active_runs=get("server.max_runs", 4),
        default_limits=Limits(**limit_fields), caps=LimitCaps(**cap_fields),
        max_streams=get("server.max_streams", DEFAULT_STREAMS),
        max_streams_per_client=get("server.max_streams_per_client",
                                   DEFAULT_STREAMS_PER_CLIENT),
        max_request_bytes_in_flight=get("server.max_request_bytes_in_flight",
                                        DEFAULT_REQUEST_BYTES),
        shutdown_grace_seconds=get("server.shutdown_grace_seconds", 10.0),
        state_dir_max_bytes=get("server.state_dir_max_bytes"),
        retention=RetentionPolicy(max_age_days=get("retention.max_age_days"),
                                  max_finished_runs=get("retention.max_finished_runs"),
                                  sweep_seconds=get("retention.sweep_seconds", 600.0)),
        quotas=quotas.from_values({k: v.value for k, v in values.items()
                                   if k.startswith(quotas.PREFIX)}),
        auth=AuthConfig(principals_file=get("auth.principals_file"),
                        certificates=get("auth.certificates", {})),
        shared_memory=get("memory.shared", False),
        llm=LLMAccess(key_files=_key_files(get("llm.key_files", {})),
                      allowed_base_urls=get("llm.allowed_base_urls", ()),
                      principal_key_dir=get("llm.principal_key_dir")))


def _key_files(table: Mapping[str, str]) -> tuple[tuple[str, Path], ...]:
    for provider in table:
        if provider not in KEY_ENV:
            raise FieldError("llm.key_files", f"{provider!r}: use PROVIDER=PATH with "
                             f"PROVIDER one of {', '.join(KEY_ENV)}")
    return tuple((provider, Path(path)) for provider, path in table.items())


def _gpu_slots(values: Mapping[str, Value], docker_url: str | None, image: str | None,
               discover_gpus: Discover) -> tuple[GpuSlot, ...]:
    found = values.get("sandbox.gpus")
    setting = found.value if found is not None and found.value is not None else "none"
    if setting == "none":
        return ()
    if setting == "auto":
        try:
            return discover_gpus(docker_url, image)
        except GpuConfigError as exc:
            origin = found.origin if found is not None else "default"
            raise ConfigError(f"sandbox.gpus = \"auto\" (from {origin}): {exc}",
                              "sandbox.gpus") from None
    if not isinstance(setting, tuple):
        raise FieldError("sandbox.gpus", f"unexpected value {setting!r}")
    return setting
