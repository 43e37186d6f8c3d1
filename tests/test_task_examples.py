"""The shipped example tasks end to end, as a user runs them: `bilevel run --task
examples/...` with an in-process controller on the real engine (Levels 1 and 2, the
trusted scorer in its own container), and `bilevel train --task`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_cli_commands import bilevel

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[1]


def _local(tmp_path: Path, image: str, namespace: str) -> tuple[str, ...]:
    return ("--state-dir", str(tmp_path), "--image", image, "--namespace", namespace)


def test_run_spirals_with_levels_1_and_2_and_its_trusted_scorer(
        tmp_path: Path, sandbox_image: str) -> None:
    local = _local(tmp_path, sandbox_image, "pytest-task-spirals")
    done = bilevel("run", "--task", str(REPO / "examples/spirals-mlp"), "--trials", "11",
                   "--levels", "1,2", "--mechanism-source", "library", "--l2-every", "3",
                   "--seed", "3", *local)
    assert done.returncode == 0, done.stderr
    assert "trial   0  keep    val_loss 0.6" in done.stderr  # the scorer's baseline loss
    assert "L2 " in done.stderr  # a Level-2 round ran on this task
    run_id, _, summary = done.stdout.strip().partition(": ")
    assert "val_bpb" not in summary and "best val_loss" in summary, summary
    assert "below the baseline" in summary and "forgeable" not in summary
    tsv = bilevel("artifact", run_id, "results.tsv", *local)
    rows = [line.split("\t") for line in tsv.stdout.splitlines()]
    assert rows[0] == ["commit", "val_loss", "status", "description"]  # no memory_gb
    losses = [float(r[1]) for r in rows[1:] if r[2] != "crash"]
    assert len(losses) >= 8 and all(0.0 < v < 5.0 for v in losses)
    assert min(losses) < losses[0]  # the search found a lower loss than the baseline


def test_run_a_maximize_task_reports_its_metric_in_its_direction(
        tmp_path: Path, sandbox_image: str) -> None:
    local = _local(tmp_path, sandbox_image, "pytest-task-waves")
    done = bilevel("run", "--task", str(REPO / "examples/waves-regression"), "--trials", "2",
                   *local)
    assert done.returncode == 0, done.stderr
    assert "trial   0  keep    r2 0.5" in done.stderr
    run_id, _, summary = done.stdout.strip().partition(": ")
    assert "best r2 0." in summary and "above the baseline 0.5" in summary, summary
    assert "Δ r2 = +" in summary and "val_bpb" not in summary
    tsv = bilevel("artifact", run_id, "results.tsv", *local).stdout.splitlines()
    assert tsv[0].split("\t")[1] == "r2"
    values = [float(line.split("\t")[1]) for line in tsv[1:]]
    assert values[0] == pytest.approx(0.503659, abs=1e-6) and max(values) > values[0]
    listed = bilevel("runs", *local)
    assert "r2 0.503659" in listed.stdout


def test_train_one_candidate_of_a_task(tmp_path: Path, sandbox_image: str) -> None:
    edited = tmp_path / "train.py"
    source = (REPO / "examples/spirals-mlp/train.py").read_text()
    edited.write_text(source.replace("HIDDEN = 16", "HIDDEN = 64").replace(
        "EPOCHS = 300", "EPOCHS = 1200").replace("LEARNING_RATE = 0.1", "LEARNING_RATE = 1.0"))
    done = bilevel("train", "--task", str(REPO / "examples/spirals-mlp"), "--train-py",
                   str(edited))
    assert done.returncode == 0, done.stderr
    value = float(done.stdout.split("val_loss: ")[1].split()[0])
    assert 0.0 < value < 0.5 and "(lower is better)" in done.stdout  # baseline: 0.63
    bad = bilevel("train", "--task", str(tmp_path))
    assert bad.returncode == 2 and "has no bilevel-task.toml" in bad.stderr


@pytest.mark.parametrize(("example", "editable", "knob"), [
    ("blobs-argparse", "flags.json", '"lr"'),  # flags through train.command templates
    ("waves-yaml", "config.yaml", "ridge:"),  # keys of a YAML config, by dotted path
])
def test_scripts_as_they_are_run_with_their_own_file_names(
        tmp_path: Path, sandbox_image: str, example: str, editable: str, knob: str) -> None:
    local = _local(tmp_path, sandbox_image, f"pytest-task-{example}")
    done = bilevel("run", "--task", str(REPO / "examples" / example), "--trials", "3",
                   "--seed", "1", *local)
    assert done.returncode == 0, done.stderr
    assert "knobs" in done.stderr and "of train.command" in done.stderr \
        if editable == "flags.json" else "key fit.ridge of config.yaml" in done.stderr
    run_id = done.stdout.strip().partition(": ")[0]
    rows = [line.split("\t") for line in
            bilevel("artifact", run_id, "results.tsv", *local).stdout.splitlines()]
    assert rows[0][1] in ("val_loss", "r2") and "memory_gb" not in rows[0]
    assert all(r[2] != "crash" for r in rows[1:]), rows  # flags and links reached the script
    best = bilevel("artifact", run_id, f"best/{editable}", *local)
    assert best.returncode == 0 and knob in best.stdout, best.stderr
    diff = bilevel("artifact", run_id, f"trials/1/{editable}", *local)
    assert diff.returncode == 0
    changed = bilevel("artifact", run_id, "trials/1/diff", *local).stdout
    assert f"--- a/{editable}" in changed and f"+++ b/{editable}" in changed
