"""`bilevel report RUN_OR_ABLATION`: a self-contained HTML page and a Markdown summary.

Both are written to files, and stdout gets only their paths: a report is a page to open,
and a pipe or a terminal is the wrong place for a page of tables.

Without --server it reads the state dir's store directly (no controller is started,
nothing is changed); with --server it asks that controller over the gRPC API, with the
same token as every client command. An ablation's definition lives in its folder under
the state dir, so ablation reports are local only.

The analysis modules import scipy and matplotlib (seconds on a small machine), so they
are imported only when a report is made, not when the parser is built.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from controller.commands.connection import SERVER_ENV, add_client_arguments
from controller.commands.controller_flags import server_config
from controller.config import ConfigError
from controller.config_file import CONFIG_ENV
from controller.store.records import NotFoundError

if TYPE_CHECKING:
    from controller.analysis.pages import Report
    from controller.api.client import Client


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("report", help="write an HTML and Markdown report of a run or an "
                                        "ablation",
                         description="Write report.html (self-contained: open it in a "
                                     "browser) and report.md of a run or an ablation, and "
                                     "print their paths.")
    cmd.add_argument("target", metavar="RUN_OR_ABLATION", help="run-… or abl-… id")
    cmd.add_argument("--out", type=Path, default=None,
                     help="folder for report.html and report.md (default: the ablation's "
                          "folder, or <state>/reports/<run>; with --server ./reports/<run>)")
    add_client_arguments(cmd)
    for action in cmd._actions:  # no controller is started: say what --server changes
        if "--server" in action.option_strings:
            action.help = (f"controller address HOST:PORT (env {SERVER_ENV}): read the run "
                           "over its gRPC API; without it, the --state-dir store is read")
    local = cmd.add_argument_group("local store (without --server)")
    local.add_argument("--config", type=Path, default=None,
                       help=f"TOML config file that names the state dir (default: "
                            f"${CONFIG_ENV})")
    local.add_argument("--state-dir", type=Path, default=None,
                       help="the controller's state dir (default: $BILEVEL_STATE_DIR, "
                            "./.bilevel if present, else ~/.local/share/bilevel)")
    cmd.set_defaults(func=cmd_report)


def _write(report: Report, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    html_path, md_path = out / "report.html", out / "report.md"
    html_path.write_text(report.html)
    md_path.write_text(report.markdown)
    return html_path, md_path


def write_ablation_report(state_dir: Path, ablation_id: str,
                          out: Path | None) -> tuple[Path, Path]:
    from controller.analysis import ablation
    from controller.analysis.data import StateDir
    from controller.analysis.report_ablation import ablation_report
    from controller.analysis.summary import summarize_ablation

    spec = ablation.load(state_dir, ablation_id)
    state = StateDir(state_dir)
    try:
        report = ablation_report(summarize_ablation(spec, state))
    finally:
        state.close()
    return _write(report, out or ablation.folder(state_dir, ablation_id))


def write_run_report(state_dir: Path, run_id: str, out: Path | None) -> tuple[Path, Path]:
    from controller.analysis.data import StateDir
    from controller.analysis.report import run_report

    state = StateDir(state_dir)
    try:
        report = run_report(state.load(run_id, trial_diffs=True))
    finally:
        state.close()
    return _write(report, out or state_dir / "reports" / run_id)


def _remote_report(args: argparse.Namespace) -> int:
    from controller.commands.client_command import run_client_command

    if args.target.startswith("abl-"):
        print("error: RUN_OR_ABLATION: an ablation report reads the ablation's folder in "
              "the local --state-dir; with --server only a run-… report can be made",
              file=sys.stderr)
        return 2

    async def body(client: Client) -> int:
        from controller.analysis import remote
        from controller.analysis.report import run_report

        data = await remote.load(client, args.target)
        _say(_write(run_report(data), args.out or Path("reports") / args.target))
        return 0

    try:
        return run_client_command(args, body)
    except ValueError as exc:  # the controller sent data the report refuses to read
        print(f"error: {exc}", file=sys.stderr)
        return 2


def cmd_report(args: argparse.Namespace) -> int:
    if args.server:
        return _remote_report(args)
    try:
        state_dir = server_config(args).state_dir
        if args.target.startswith("abl-"):
            paths = write_ablation_report(state_dir, args.target, args.out)
        else:
            paths = write_run_report(state_dir, args.target, args.out)
    except (ConfigError, NotFoundError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _say(paths)
    return 0


def _say(paths: tuple[Path, Path]) -> None:
    """Where the report went: the HTML page first (open it in a browser)."""
    print(f"report: {paths[0].resolve()}\nmarkdown: {paths[1].resolve()}")
