"""Small errors a person meets first, through the real CLI: a misspelt flag gets a
suggestion, a missing task directory is named as such, a wrong metric name lists the
metrics the job did write, `ui --help` and the README say the same thing, and `report`
writes files and prints where (its Markdown readable as text)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_cli_commands import bilevel
from tests.test_report_run import hostile_run
from tests.test_task_api import MANIFEST, write_task

ROOT = Path(__file__).resolve().parent.parent


def test_a_misspelt_flag_gets_the_closest_one_suggested() -> None:
    done = bilevel("run", "--trails", "6")
    assert done.returncode == 2
    assert "unrecognized arguments: --trails 6; did you mean --trials?" in done.stderr
    done = bilevel("runs", "--stat-dir", "x")
    assert "did you mean --state-dir?" in done.stderr
    assert "did you mean" not in bilevel("run", "--zzzz").stderr  # nothing close: no guess


def test_a_missing_task_directory_is_named_as_a_directory(tmp_path: Path) -> None:
    state = ("--state-dir", str(tmp_path / "state"))
    missing = bilevel("run", "--task", "my-task-dir", *state)
    assert missing.returncode == 2
    assert "--task: no directory 'my-task-dir' (and no preset of that name; presets: " \
        "surrogate" in missing.stderr, missing.stderr
    (tmp_path / "task-dir").mkdir()
    swapped = bilevel("run", "--preset", str(tmp_path / "task-dir"), *state)
    assert swapped.returncode == 2
    assert "is a directory, not a preset; a task directory goes with --task" in swapped.stderr
    assert not (tmp_path / "state").exists()  # refused before anything started


def test_ui_help_and_the_readme_agree_it_never_starts_a_controller() -> None:
    shown = " ".join(bilevel("ui", "--help").stdout.split())
    assert "starts a controller" not in shown.replace("never starts a controller", "")
    assert "one started in this process" not in shown
    assert "It never starts a controller" in shown
    readme = " ".join((ROOT / "README.md").read_text().split())
    ui_section = readme.split("### A live web view (`bilevel ui`)")[1].split("###")[0]
    assert "it never starts a controller" in ui_section


def test_report_writes_files_prints_their_paths_and_its_markdown_reads_as_text(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    run_id = hostile_run(state)
    done = bilevel("report", run_id, "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    folder = (state / "reports" / run_id).resolve()
    assert done.stdout.splitlines() == [f"report: {folder / 'report.html'}",
                                        f"markdown: {folder / 'report.md'}"]
    md = (folder / "report.md").read_text()
    assert "&gt;" not in md and "&lt;" not in md and "&amp;" not in md
    assert "| baseline |" in md  # cells read as written


@pytest.mark.docker
def test_a_wrong_metric_name_lists_the_metrics_the_job_wrote(
        tmp_path: Path, sandbox_image: str) -> None:
    root = write_task(tmp_path / "task")
    (root / "bilevel-task.toml").write_text(MANIFEST.replace('metric = "loss"',
                                                             'metric = "los"'))
    done = bilevel("run", "--task", str(root), "--trials", "1", "--state-dir",
                   str(tmp_path / "state"), "--image", sandbox_image, "--namespace",
                   "pytest-cli-metric")
    assert done.returncode == 1, done.stderr
    assert "the job wrote no finite los metric; the metrics it wrote: 'loss', " \
        "'scorer_version'" in done.stdout, done.stdout
    baseline = next(line for line in done.stderr.splitlines() if line.startswith("trial "))
    assert "crash" in baseline and "no los" in baseline  # the live view says why, too
