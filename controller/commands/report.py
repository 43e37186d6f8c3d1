"""`bilevel report RUN_OR_ABLATION`: a self-contained HTML page and a Markdown summary,
read from the state dir (no controller needed, nothing is changed)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from controller.analysis import ablation
from controller.analysis.data import StateDir
from controller.analysis.report import Report, ablation_report, run_report
from controller.analysis.summary import summarize
from controller.commands.serve import add_controller_arguments, server_config
from controller.config import ConfigError
from controller.store.records import NotFoundError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("report", help="write an HTML and Markdown report of a run or an "
                                        "ablation")
    cmd.add_argument("target", metavar="RUN_OR_ABLATION", help="run-… or abl-… id")
    cmd.add_argument("--out", type=Path, default=None,
                     help="folder for report.html and report.md (default: the ablation's "
                          "folder, or <state>/reports/<run>)")
    add_controller_arguments(cmd)
    cmd.set_defaults(func=cmd_report)


def _write(report: Report, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    html_path, md_path = out / "report.html", out / "report.md"
    html_path.write_text(report.html)
    md_path.write_text(report.markdown)
    return html_path, md_path


def write_ablation_report(state_dir: Path, ablation_id: str,
                          out: Path | None) -> tuple[Path, Path]:
    spec = ablation.load(state_dir, ablation_id)
    state = StateDir(state_dir)
    try:
        report = ablation_report(summarize(spec, state))
    finally:
        state.close()
    return _write(report, out or ablation.folder(state_dir, ablation_id))


def write_run_report(state_dir: Path, run_id: str, out: Path | None) -> tuple[Path, Path]:
    state = StateDir(state_dir)
    try:
        report = run_report(state.load(run_id))
    finally:
        state.close()
    return _write(report, out or state_dir / "reports" / run_id)


def cmd_report(args: argparse.Namespace) -> int:
    try:
        state_dir = server_config(args).state_dir
        if args.target.startswith("abl-"):
            paths = write_ablation_report(state_dir, args.target, args.out)
        else:
            paths = write_run_report(state_dir, args.target, args.out)
    except (ConfigError, NotFoundError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(paths[1].read_text())
    print(f"report: {paths[0]}")
    return 0
