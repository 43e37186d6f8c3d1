"""bilevel-task.toml: bad manifests give errors naming the field; the built-ins and the
examples load through the same loader; the default knob rule; what phases get copied."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from controller.research.settings import TaskSettings
from controller.research.task import FORGEABLE, GPT, Objective, objective_of
from controller.research.tasks import registry
from controller.research.tasks.errors import TaskError
from controller.research.tasks.generic import ManifestTask
from controller.research.tasks.knob_rules import default_knob
from controller.research.tasks.manifest import (
    copied_files,
    load_task_dir,
    phase1_files,
)
from controller.research.tasks.surrogate import SurrogateTask
from controller.research.tasks.trainer import TrainerTask

REPO = Path(__file__).resolve().parents[1]
GOOD = """\
name = "t"
editable = "train.py"
metric = "err"
direction = "minimize"
[train]
command = ["python3", "train.py"]
mounts = {"data/train" = "/data/train"}
[score]
command = ["python3", "score.py"]
mounts = {"data/eval" = "/data/eval"}
[knobs]
LR = {low = 0.001, high = 1.0, log = true}
"""


def make_task(root: Path, manifest: str = GOOD, train: str = "LR = 0.1\nWIDTH = 32\n") -> Path:
    for d in ("data/train", "data/eval"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "data/train/x.csv").write_text("1\n")
    (root / "data/eval/y.csv").write_text("2\n")
    (root / "bilevel-task.toml").write_text(manifest)
    (root / "train.py").write_text(train)
    (root / "score.py").write_text("print('{}')\n")
    (root / "helper.py").write_text("H = 1\n")
    return root


def error_of(root: Path) -> TaskError:
    with pytest.raises(TaskError) as caught:
        load_task_dir(root)
    return caught.value


@pytest.mark.parametrize(("change", "field", "words"), [
    (('editable = "train.py"', 'editable = "missing.py"'), "editable", "is not a file"),
    (('metric = "err"', 'metric = "err"\ncolour = "red"'), "colour", "unknown key"),
    (("[score]", "[score]\ntimeout = 3"), "score.timeout", "unknown key"),
    (("high = 1.0", "high = 0.01"), "knobs.LR", "does not contain the default 0.1"),
    (('"data/train" = "/data/train"', '"../outside" = "/data/train"'),
     "train.mounts.../outside", "climbs out"),
    (('"data/train" = "/data/train"', '"/etc" = "/data/train"'), "train.mounts./etc",
     "relative path"),
    (('"data/train" = "/data/train"', '"data/train" = "data"'), "train.mounts.data/train",
     "a relative target must be free"),
    (('"data/train" = "/data/train"', '"data/train" = "x y"'), "train.mounts.data/train",
     "under /data/"),
    (('"data/train" = "/data/train"', '"data/train" = "/opt/venv/lib/python3/dist-packages"'),
     "train.mounts.data/train", "under /data/"),
    (('command = ["python3", "train.py"]', 'command = "python3 train.py"'), "train.command",
     "list of non-empty strings"),
    (('command = ["python3", "score.py"]', 'command = ["python3", 3]'), "score.command",
     "list of non-empty strings"),
    (('direction = "minimize"', 'direction = "down"'), "direction", "\"minimize\" or"),
    (('name = "t"', 'name = "Bad Name"'), "name", "a-z"),
    (('metric = "err"', 'metric = "val-err"'), "metric", "identifier"),
    (("LR = {low = 0.001, high = 1.0, log = true}", "NOPE = {low = 0, high = 1}"),
     "knobs.NOPE", "no top-level constant NOPE of train.py"),
    (("LR = {low = 0.001, high = 1.0, log = true}", "LR = {low = 0.0, high = 1.0, log = true}"),
     "knobs.LR.low", "log range needs low > 0"),
    (('direction = "minimize"', 'direction = "minimize"\nrequirements = ["https://e/x.whl"]'),
     "requirements", "plain requirement"),
    (("[score]", 'requirements = ["numpy"]\n[score]'), "train.requirements", "unknown key"),
    (("[train]", 'builtin = "gpt"\n[train]'), "builtin", "must be one of"),
])
def test_bad_manifest_names_the_field(tmp_path: Path, change: tuple[str, str], field: str,
                                      words: str) -> None:
    make_task(tmp_path, GOOD.replace(*change))
    err = error_of(tmp_path)
    assert err.field == field, err
    assert words in err.reason, err


def test_mount_through_a_symlink_and_symlinks_anywhere_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = make_task(tmp_path / "task")
    (root / "data/eval/y.csv").unlink()
    (root / "data/eval").rmdir()
    os.symlink(outside, root / "data/eval")
    err = error_of(root)
    assert err.field == "score.mounts.data/eval" and "symlink" in err.reason
    os.unlink(root / "data/eval")
    (root / "data/eval").mkdir()
    os.symlink("/etc/passwd", root / "data/train/leak")
    err = error_of(root)
    assert err.field == "task" and "data/train/leak is a symlink" in err.reason


def test_missing_manifest_bad_toml_and_missing_train(tmp_path: Path) -> None:
    assert "has no bilevel-task.toml" in str(error_of(tmp_path))
    make_task(tmp_path, "name = [")
    assert "not valid TOML" in error_of(tmp_path).reason
    make_task(tmp_path, GOOD.split("[train]")[0])
    assert error_of(tmp_path).field == "train"


def test_editable_inside_a_data_folder_and_outputs_overlapping_data(tmp_path: Path) -> None:
    make_task(tmp_path, GOOD.replace('editable = "train.py"', 'editable = "data/train/t.py"'))
    (tmp_path / "data/train/t.py").write_text("LR = 0.1\n")
    assert error_of(tmp_path).field == "editable"
    make_task(tmp_path, GOOD.replace('mounts = {"data/train" = "/data/train"}',
                                     'mounts = {"data/train" = "/data/train"}\n'
                                     'outputs = "data/train/out"'))
    assert error_of(tmp_path).field == "train.outputs"


def test_phases_get_the_directory_without_data_and_phase1_without_the_scorer(
        tmp_path: Path) -> None:
    task = load_task_dir(make_task(tmp_path))
    assert task.data_dirs == ("data/eval", "data/train")
    assert task.score is not None and task.score.files == ("score.py",)
    assert sorted(copied_files(task)) == ["bilevel-task.toml", "helper.py", "score.py",
                                          "train.py"]
    assert sorted(phase1_files(task)) == ["bilevel-task.toml", "helper.py", "train.py"]


def test_default_knob_rule_and_ranges(tmp_path: Path) -> None:
    source = ("LR = 0.1\nWIDTH = 32\nSTEPS = 300\nUSE_BIAS = True\nNAME = 'x'\n"
              "OFFSET = -2\nDECAY = 0.0\n")
    task = ManifestTask(load_task_dir(make_task(tmp_path, train=source)), None)
    space = {k.name: k for k in task.search_space().knobs}
    assert sorted(space) == ["DECAY", "LR", "STEPS", "USE_BIAS", "WIDTH"]
    assert (space["LR"].low, space["LR"].high, space["LR"].log) == (0.001, 1.0, True)
    assert (space["WIDTH"].low, space["WIDTH"].high, space["WIDTH"].power_of_two) == (4, 256, True)
    assert (space["STEPS"].low, space["STEPS"].high) == (75, 1200)
    assert space["USE_BIAS"].choices == (False, True)
    assert (space["DECAY"].low, space["DECAY"].high) == (0.0, 1.0)
    assert default_knob("NAME", "x") is None and default_knob("OFFSET", -2) is None


def test_knob_set_false_is_fixed_and_choices_must_hold_the_default(tmp_path: Path) -> None:
    make_task(tmp_path, GOOD + "WIDTH = false\n")
    task = ManifestTask(load_task_dir(tmp_path), None)
    assert task.search_space().names == ("LR",)
    make_task(tmp_path, GOOD + "WIDTH = {choices = [8, 16]}\n")
    err = error_of(tmp_path)
    assert err.field == "knobs.WIDTH.choices" and "default 32" in err.reason


def test_builtins_load_through_the_same_loader() -> None:
    for preset in registry.preset_names():
        manifest = load_task_dir(registry.builtin_dir(preset))
        assert manifest.builtin == preset and manifest.metric == "val_bpb"
        task = registry.make_task(TaskSettings(preset=preset), None)  # type: ignore[arg-type]
        assert isinstance(task, SurrogateTask if preset == "surrogate" else TrainerTask)
        assert task.baseline_source() == manifest.editable_source()
        assert objective_of(task) == GPT
    with pytest.raises(TaskError, match="leave this out"):
        root = registry.builtin_dir("surrogate")
        bad = (root / "bilevel-task.toml").read_text() + '[train]\ncommand = ["x"]\n'
        tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "bilevel-test-builtin"
        tmp.mkdir(exist_ok=True)
        (tmp / "bilevel-task.toml").write_text(bad)
        load_task_dir(tmp)


def test_examples_load_with_their_objectives() -> None:
    spirals = registry.task_from_dir(REPO / "examples/spirals-mlp", None)
    waves = registry.task_from_dir(REPO / "examples/waves-regression", None)
    assert objective_of(spirals) == Objective("val_loss", "minimize")
    assert objective_of(waves) == Objective("r2", "maximize")
    assert "r2 (higher is better)" in waves.description
    assert str(registry.resolve_task_dir("surrogate")).endswith("trainer/tasks/surrogate")
    with pytest.raises(Exception, match="neither a task directory nor a preset"):
        registry.resolve_task_dir("no-such-task")


def test_a_task_without_a_scorer_says_its_metric_is_forgeable(tmp_path: Path) -> None:
    make_task(tmp_path, GOOD.split("[score]")[0] + GOOD.split("mounts = {\"data/eval\" = "
                                                             "\"/data/eval\"}")[1])
    task = ManifestTask(load_task_dir(tmp_path), None)
    assert task.objective.self_reported
    assert FORGEABLE in task.description and FORGEABLE in task.objective.describe()


def test_summary_line_names_the_metric_its_direction_and_a_forgeable_one() -> None:
    from controller.research.level1.loop import run_summary_line
    from controller.store.records import RunRecord, RunState

    run = RunRecord("run-x", RunState.SUCCEEDED, {}, 0.0, 0.0, trials_done=5,
                    baseline_val_bpb=-0.5, best_val_bpb=-0.75, best_trial=3)
    text = run_summary_line(run, "done", None, Objective("r2", "maximize"))
    assert "best r2 0.750000 (trial 3) was 0.250000 above the baseline 0.500000" in text
    assert "val_bpb" not in text and FORGEABLE not in text
    forged = run_summary_line(run, "done", None, Objective("acc", "maximize", self_reported=True))
    assert forged.endswith(FORGEABLE)
    gpt = run_summary_line(RunRecord("run-y", RunState.SUCCEEDED, {}, 0.0, 0.0, trials_done=2,
                              baseline_val_bpb=1.5, best_val_bpb=1.5, best_trial=0), "done")
    assert gpt == "done; no improvement over the baseline val_bpb 1.500000 in 1 trials"


@pytest.mark.parametrize("example", ["spirals-mlp", "waves-regression"])
def test_example_data_is_what_its_prepare_step_makes(tmp_path: Path, example: str) -> None:
    """The committed CSVs are reproducible: prepare.py, run on a copy, writes the same
    bytes (numpy's seeded generator)."""
    import shutil
    import subprocess
    import sys

    copy = tmp_path / example
    shutil.copytree(REPO / "examples" / example, copy)
    shutil.rmtree(copy / "data")
    subprocess.run([sys.executable, str(copy / "prepare.py")], check=True, timeout=60)
    for path in sorted((REPO / "examples" / example / "data").rglob("*.csv")):
        made = copy / path.relative_to(REPO / "examples" / example)
        assert made.read_bytes() == path.read_bytes(), path


def test_lessons_are_keyed_by_name_and_a_hash_of_manifest_and_editable(tmp_path: Path) -> None:
    from controller.research.task import memory_key

    root = make_task(tmp_path)
    first = memory_key(ManifestTask(load_task_dir(root), None))
    assert first.startswith("t@") and len(first) == len("t@") + 16
    (root / "train.py").write_text("LR = 0.2\nWIDTH = 32\n")
    second = memory_key(ManifestTask(load_task_dir(root), None))
    (root / "bilevel-task.toml").write_text(GOOD.replace("high = 1.0", "high = 2.0"))
    third = memory_key(ManifestTask(load_task_dir(root), None))
    assert len({first, second, third}) == 3
    assert memory_key(SurrogateTask(None)) == "surrogate"  # a built-in keeps its name
