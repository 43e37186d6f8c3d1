"""Controller flags for LLM access: where API keys come from and which base URLs a run
may send them to. Shared by `bilevel serve` and the commands that embed a controller;
they add to the config file's `[llm]` section (controller/config_file.py)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from controller.config import ConfigError
from controller.llm.keys import KEY_ENV
from controller.llm.settings import LLMAccess


def add_llm_access_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("LLM access (the keys stay in the controller)")
    group.add_argument("--llm-key-file", action="append", default=[], metavar="PROVIDER=PATH",
                       help="file holding the API key of a provider (default: "
                            f"{', '.join(KEY_ENV.values())} from the environment)")
    group.add_argument("--llm-base-url", action="append", default=[], metavar="URL",
                       help="a base URL runs may use (the controller's key is sent there); "
                            "repeatable")


def llm_access(args: argparse.Namespace, base: LLMAccess | None = None) -> LLMAccess:
    """`base` (the configured access) with the flags' key files and base URLs added."""
    base = base or LLMAccess()
    files = []
    for item in getattr(args, "llm_key_file", None) or []:
        provider, sep, path = item.partition("=")
        if not sep or provider not in KEY_ENV or not path:
            raise ConfigError(f"--llm-key-file {item!r}: use PROVIDER=PATH with PROVIDER one "
                              f"of {', '.join(KEY_ENV)}")
        files.append((provider, Path(path)))
    return replace(base, key_files=(*files, *base.key_files)).allowing(
        *(getattr(args, "llm_base_url", None) or []))
