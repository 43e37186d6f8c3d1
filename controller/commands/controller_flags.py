"""The flags of a controller's configuration, made from the table of keys
(controller/config_keys.py): each sets the key it is listed with, above the config file
and the environment (controller/config_file.py).

`bilevel serve` has them all; a command that starts a controller in this process when no
--server is given has the sandbox flags; a command that only reads the state dir
accepts those too, unlisted, and shows --config and --state-dir.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from controller.config import ServerConfig
from controller.config_file import CONFIG_ENV, load
from controller.config_keys import CONTROLLER, KEYS, LLM, SERVE, STATE, Setting

_TYPES: dict[str, Any] = {"int": int, "float": float, "path": Path}


def _add(group: argparse._ActionsContainer, setting: Setting, shown: bool = True) -> None:
    if setting.repeat:
        group.add_argument(setting.flag, dest=setting.flag_dest, action="append", default=[],
                           metavar=setting.metavar or None,
                           help=setting.help if shown else argparse.SUPPRESS)
        return
    group.add_argument(setting.flag, dest=setting.flag_dest,
                       type=_TYPES.get(setting.kind, str), choices=setting.choices or None,
                       metavar=setting.metavar or None,
                       help=setting.help if shown else argparse.SUPPRESS)


def _settings(scope: str) -> list[Setting]:
    return [s for s in KEYS.values() if s.flag and s.scope == scope]


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags only `bilevel serve` has: what it listens on and who may call."""
    for setting in _settings(SERVE):
        _add(parser, setting)


def add_controller_arguments(parser: argparse.ArgumentParser,
                             store_only: bool = False, embedded: bool = False) -> None:
    """--config, --state-dir and the sandbox flags, shared by `serve` and the in-process
    controller other commands start when no --server is given. `store_only` (commands
    that only read the state dir): the sandbox flags are still accepted, as the other
    commands take them, but left out of the help."""
    title = "state dir (without --server)" if store_only else \
        "in-process controller (without --server)" if embedded else "controller"
    group = parser.add_argument_group(title)
    group.add_argument("--config", type=Path, default=None,
                       help=f"TOML config file (default: ${CONFIG_ENV}); see "
                            "deploy/bilevel.toml. Env BILEVEL_<SECTION>__<KEY> overrides it")
    for setting in _settings(STATE):
        _add(group, setting)
    for setting in _settings(CONTROLLER):
        _add(group, setting, shown=not store_only)


def add_llm_access_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the controller's LLM keys come from and which base URLs may receive them
    (they add to the config file's [llm] section)."""
    group = parser.add_argument_group("LLM access (the keys stay in the controller)")
    for setting in _settings(LLM):
        _add(group, setting)


def flags_of(args: argparse.Namespace) -> dict[str, Any]:
    """{key: value} of the flags this command has (None: not given)."""
    return {key: getattr(args, s.flag_dest, None) for key, s in KEYS.items() if s.flag}


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The validated config: defaults < file < environment < flags. Raises ConfigError."""
    return load(getattr(args, "config", None), os.environ, flags_of(args))


def config_of(args: argparse.Namespace) -> ServerConfig:
    """The configuration the flags, file and environment give, without looking for GPUs
    (cheap: for a command that only needs the state dir or the TLS files)."""
    return load(getattr(args, "config", None), os.environ, flags_of(args),
                discover_gpus=lambda _url, _image: ())


def state_dir_of(args: argparse.Namespace) -> Path:
    """The state dir the flags, file and environment name."""
    return config_of(args).state_dir
