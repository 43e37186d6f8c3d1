"""The `bilevel` command line. Each subcommand lives in its own module under
controller/commands/ and registers itself with `add_parser(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from controller.logging import configure_logging

# Modules providing `add_parser(subparsers)`; each sets `func(args) -> int`.
COMMAND_MODULES = (
    "controller.commands.image",
    "controller.commands.exec",
    "controller.commands.train",
    "controller.commands.serve",
    "controller.commands.run",
    "controller.commands.runs",
    "controller.commands.watch",
    "controller.commands.cancel",
    "controller.commands.artifact",
    "controller.commands.resume",
    "controller.commands.memory",
    "controller.commands.ablate",
    "controller.commands.report",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bilevel",
        description="Autoresearch that improves its own search, in sandboxed containers.")
    parser.add_argument("--log-format", choices=("console", "json"), default="console")
    parser.add_argument("--log-level", default="info")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_format, args.log_level)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
