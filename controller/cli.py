"""The `bilevel` command line. Each subcommand lives in its own module under
controller/commands/ and registers itself with `add_parser(subparsers)`.

Only the module of the command being run is imported: `bilevel --help` and a typo need
none of them (some import scipy and matplotlib, seconds on a small machine), so the
other commands appear in the parser as one-line stubs.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from collections.abc import Sequence

# Command name -> (module providing `add_parser(subparsers)`, one-line summary).
COMMANDS: dict[str, tuple[str, str]] = {
    "image": ("controller.commands.image", "manage the sandbox image"),
    "exec": ("controller.commands.exec", "run a Python file in a sandbox container"),
    "train": ("controller.commands.train", "train one candidate train.py (no search)"),
    "serve": ("controller.commands.serve", "run the gRPC controller"),
    "run": ("controller.commands.run", "start a research run and follow it"),
    "runs": ("controller.commands.runs", "list runs"),
    "watch": ("controller.commands.watch", "follow a run's events"),
    "cancel": ("controller.commands.cancel", "cancel a run"),
    "delete": ("controller.commands.delete", "delete finished runs and what only they used"),
    "artifact": ("controller.commands.artifact", "fetch a run artifact (best/train.py, "
                 "results.tsv, trials/N/...)"),
    "resume": ("controller.commands.resume", "continue a paused or interrupted run and "
               "follow it"),
    "memory": ("controller.commands.memory", "list or clear lessons kept for later runs"),
    "ablate": ("controller.commands.ablate", "compare search strategies: arms x repeats"),
    "report": ("controller.commands.report", "write an HTML and Markdown report of a run "
               "or an ablation"),
    "ui": ("controller.commands.ui", "serve a read-only live web view of runs and ablations"),
    "token": ("controller.commands.token", "create, list or revoke the principals who may "
              "call the controller"),
    "audit": ("controller.commands.audit", "read the audit log of calls, or --verify its "
              "chain"),
}
GLOBAL_OPTIONS_WITH_VALUE = ("--log-format", "--log-level")


def _command_in(argv: Sequence[str]) -> str | None:
    """The subcommand named in argv: the first word that is not a global option."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in GLOBAL_OPTIONS_WITH_VALUE:
            skip = True
        elif not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The full parser of the command in `argv` (every command's when argv is None)."""
    parser = argparse.ArgumentParser(
        prog="bilevel",
        description="Autoresearch that improves its own search, in sandboxed containers.")
    parser.add_argument("--log-format", choices=("console", "json"), default="console")
    parser.add_argument("--log-level", default="info",
                        help="least level of the log kept in <state dir>/bilevel.log")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the log on stderr (`serve` always does; other "
                             "commands show only warnings and errors)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = _command_in(argv) if argv is not None else None
    for name, (module, summary) in COMMANDS.items():
        if argv is None or name == wanted:
            importlib.import_module(module).add_parser(sub)
        else:
            sub.add_parser(name, help=summary)
    return parser


def _suggestion(parser: argparse.ArgumentParser, command: str, extra: list[str]) -> str:
    """"; did you mean --trials?" for the first unknown flag close to one of the
    command's own (argparse only says that it does not know it)."""
    known: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            known = list(action.choices[command]._option_string_actions)
    for word in extra:
        if word.startswith("--"):
            close = difflib.get_close_matches(word.split("=")[0], known, n=1, cutoff=0.7)
            if close:
                return f"; did you mean {close[0]}?"
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(words)
    args, extra = parser.parse_known_args(words)
    # --verbose is global, yet people type it after the command too: accept it there.
    if any(word not in ("-v", "--verbose") for word in extra):
        parser.error(f"unrecognized arguments: {' '.join(extra)}"
                     f"{_suggestion(parser, args.command, extra)}")
    args.verbose = args.verbose or bool(extra)
    from controller.logging import configure_logging

    # `serve` is a service: its log is its output. Elsewhere the log would bury the
    # progress a user reads, so it goes to the state dir's log file.
    shown = args.log_level if args.verbose or args.command == "serve" else "warning"
    configure_logging(args.log_format, args.log_level, stderr_level=shown)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        # Ctrl-C: the command's own clean-up has run (an in-process controller paused
        # its runs on the way out); a traceback would only bury that.
        print("interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
