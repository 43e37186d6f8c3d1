"""Offline, `bilevel run` leaves Level 1.5 out unless the rule controller is named: the
rule-based controller measured no gain over Level 1 on the surrogate (see level15.py)."""

from __future__ import annotations

import pytest

from controller.api import enums
from controller.cli import build_parser
from controller.commands.run import L15_OFFLINE_NOTE, cmd_run, outer_levels, run_request


def _request(*flags: str) -> tuple[list[str], str]:
    argv = ["run", "--preset", "surrogate", *flags]
    args = build_parser(argv).parse_args(argv)
    outer = run_request(args).outer
    return [enums.from_enum(enums.LEVELS, lv, None) for lv in outer.levels], \
        outer.config_controller


def test_offline_runs_leave_level15_out_unless_the_rule_controller_is_named() -> None:
    assert _request("--levels", "1,1.5,2", "--mechanism-source", "library") == (
        ["1", "2"], "rule")
    assert _request("--levels", "1,1.5,2", "--mechanism-source", "library",
                    "--config-controller", "rule") == (["1", "1.5", "2"], "rule")
    assert _request("--levels", "1,1.5", "--provider", "openai") == (["1", "1.5"], "llm")
    assert _request() == (["1"], "rule")


def test_the_note_says_why_and_how_to_run_it_anyway(
        capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", "--preset", "surrogate", "--levels", "1,1.5", "--train-py",
            "/nonexistent/train.py"]
    args = build_parser(argv).parse_args(argv)
    assert outer_levels(args)[2]
    assert cmd_run(args) == 2  # the missing file stops it before any controller starts
    err = capsys.readouterr().err
    assert L15_OFFLINE_NOTE in err and "--config-controller rule" in err
