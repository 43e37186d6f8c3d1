"""Knobs where scripts keep them: lowercase globals named in [knobs], keys of a YAML,
JSON or TOML config, and command-line flags through train.command templates; and the
caps that keep a hostile config (an alias bomb, a deep nest, a huge file) from hurting
the controller, each shown stopping the attack on its own with a twin without it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from controller.research.tasks import config_knobs, flag_knobs
from controller.research.tasks.errors import TaskError
from controller.research.tasks.generic import ManifestTask
from controller.research.tasks.manifest import load_task_dir
from trainer.knobs import KnobError

REPO = Path(__file__).resolve().parents[1]

YAML = """# settings
model:
  width: 64        # hidden units
  dropout: 0.1
optim:
  lr: 0.001        # the step
  nesterov: false
name: run
"""


def test_yaml_keys_are_rewritten_in_place_keeping_comments_and_floats_typed() -> None:
    assert config_knobs.read_knobs(YAML, "yaml", ["optim.lr", "model.width"]) == {
        "optim.lr": 0.001, "model.width": 64}
    out = config_knobs.write_knobs(YAML, "yaml", {"optim.lr": 1e-5, "model.width": 128,
                                                  "optim.nesterov": True})
    assert "lr: 1.0e-05        # the step" in out  # PyYAML reads a bare 1e-05 as a string
    assert "width: 128        # hidden units" in out and "# settings" in out
    assert config_knobs.read_config(out, "yaml")["optim.lr"] == 1e-5
    with pytest.raises(KnobError, match="is int"):
        config_knobs.write_knobs(YAML, "yaml", {"model.width": "wide"})
    with pytest.raises(KnobError, match="no scalar key"):
        config_knobs.write_knobs(YAML, "yaml", {"optim.momentum": 0.9})


def test_toml_and_json_keys_round_trip() -> None:
    toml = '# top\n[train]\nlr = 0.01  # step\nepochs = 10\n[train.sched]\nwarmup = 5\n'
    out = config_knobs.write_knobs(toml, "toml", {"train.lr": 0.5, "train.sched.warmup": 7})
    assert "# top" in out and "# step" in out
    assert config_knobs.read_config(out, "toml") == {"train.lr": 0.5, "train.epochs": 10,
                                                     "train.sched.warmup": 7}
    js = json.dumps({"opt": {"lr": 0.1, "betas": [0.9, 0.99]}, "epochs": 3}, indent=4)
    out = config_knobs.write_knobs(js, "json", {"opt.lr": 0.2})
    assert json.loads(out) == {"opt": {"lr": 0.2, "betas": [0.9, 0.99]}, "epochs": 3}
    assert '\n    "opt"' in out  # its own indent kept


BOMB = "a: &a {x: 1, y: 1, z: 1, w: 1, v: 1, u: 1, t: 1, s: 1}\n" + "".join(
    f"l{i}: &l{i} {{" + ", ".join(f"k{j}: *{'a' if i == 0 else f'l{i - 1}'}"
                                  for j in range(8)) + "}\n" for i in range(7))


def test_deny_a_yaml_alias_bomb_is_refused_before_it_is_walked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_knobs, "MAX_NODES", 10**9)  # the node cap off
    with pytest.raises(config_knobs.ConfigError, match="aliases"):
        config_knobs.read_config(BOMB, "yaml")


def _anchor_check_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The anchor/alias refusal switched off: its event scan sees no events."""
    monkeypatch.setattr(yaml, "parse", lambda *args, **kwargs: iter(()))


def test_deny_the_node_cap_stops_an_alias_bomb_on_its_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _anchor_check_off(monkeypatch)
    with pytest.raises(config_knobs.ConfigError, match="nodes"):
        config_knobs.read_config(BOMB, "yaml")


def test_sensitivity_without_either_check_the_bomb_expands(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _anchor_check_off(monkeypatch)
    monkeypatch.setattr(config_knobs, "MAX_NODES", 10**9)
    small = BOMB.split("l3:")[0]  # 3 levels: 8**4 leaves from a few hundred bytes
    leaves = config_knobs.read_config(small, "yaml")
    assert len(leaves) > 8 ** 4 and len(small) < 400


@pytest.mark.parametrize("kind", ["json", "toml", "yaml"])
def test_deny_deep_and_huge_configs_are_refused_quickly(kind: str) -> None:
    deep = {"json": "[" * 100_000 + "]" * 100_000, "toml": "a = " + "[" * 50_000,
            "yaml": "a: " + "[" * 5_000 + "]" * 5_000}[kind]
    started = time.monotonic()
    with pytest.raises(config_knobs.ConfigError):
        config_knobs.read_config(deep, kind)
    with pytest.raises(config_knobs.ConfigError, match="bytes"):
        config_knobs.read_config("a: 1\n" * 100_000, kind)
    assert time.monotonic() - started < 30


def test_flag_templates_find_their_flags_and_argparse_defaults() -> None:
    command = ["python3", "train.py", "--lr={lr}", "--epochs", "{epochs}", "{mode}", "{{x}}"]
    assert [(u.name, u.flag) for u in flag_knobs.uses(command)] == [
        ("lr", "--lr"), ("epochs", "--epochs"), ("mode", "")]
    assert flag_knobs.render(command, {"lr": 1e-4, "epochs": 3, "mode": "fast"}) == (
        "python3", "train.py", "--lr=0.0001", "--epochs", "3", "fast", "{x}")
    script = ("import argparse\np = argparse.ArgumentParser()\n"
              "p.add_argument('--lr', '-l', type=float, default=3e-4)\n"
              "p.add_argument('--epochs', type=int, default=2 * 5)\n"  # computed: skipped
              "p.add_argument('--name', default=os.environ['X'])\n")
    assert flag_knobs.argparse_defaults(script) == {"--lr": 3e-4, "-l": 3e-4}
    doc = flag_knobs.flags_document({"lr": 0.1, "epochs": 3})
    with pytest.raises(KnobError, match="is int"):
        flag_knobs.write_flags(doc, ["lr", "epochs"], {"epochs": "many"})
    assert json.loads(flag_knobs.write_flags(doc, ["lr", "epochs"], {"epochs": 5.0})) == {
        "lr": 0.1, "epochs": 5}


def _task(root: Path, manifest: str, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "bilevel-task.toml").write_text(manifest)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


HEAD = 'name = "t"\nmetric = "loss"\ndirection = "minimize"\n'
NANO = "batch_size = 12\nlearning_rate = 6e-4\nn_layer = 4\nout_dir = 'out'\n"


def test_lowercase_globals_named_in_knobs_are_knobs(tmp_path: Path) -> None:
    root = _task(tmp_path / "t", HEAD + 'editable = "train.py"\n[train]\ncommand = ["python3", '
                 '"train.py"]\n[knobs]\nlearning_rate = {low = 1e-5, high = 1e-2, log = true}\n'
                 "n_layer = true\n", {"train.py": NANO})
    task = ManifestTask(load_task_dir(root), None)
    assert [k.name for k in task.search_space().knobs] == ["learning_rate", "n_layer"]
    out = task.apply(task.baseline_source(), {"learning_rate": 1e-3, "n_layer": 8})
    assert "learning_rate = 0.001\nn_layer = 8\n" in out and "batch_size = 12" in out


@pytest.mark.parametrize(("editable", "text", "looked_for"), [
    ("train.py", NANO, "top-level UPPER_CASE literal constants of train.py"),
    ("conf.yaml", YAML, "scalar keys (dotted paths) of conf.yaml"),
])
def test_a_task_with_no_knob_is_refused_at_load_saying_what_was_looked_for(
        tmp_path: Path, editable: str, text: str, looked_for: str) -> None:
    root = _task(tmp_path / "t", HEAD + f'editable = "{editable}"\n[train]\ncommand = '
                 '["python3", "train.py"]\n', {editable: text, "train.py": NANO})
    with pytest.raises(TaskError) as caught:
        load_task_dir(root)
    assert caught.value.field == "knobs" and looked_for in caught.value.reason


def test_a_flags_task_takes_argparse_defaults_and_refuses_an_editable(tmp_path: Path) -> None:
    task = ManifestTask(load_task_dir(REPO / "examples/blobs-argparse"), None)
    assert json.loads(task.baseline_source()) == {"lr": 0.0001, "l2": 1.0, "epochs": 60,
                                                  "standardize": "no"}
    assert task.document.path == "flags.json" and not task.allows_code_edits
    script = "import argparse\np = argparse.ArgumentParser()\np.add_argument('--lr')\n"
    manifest = HEAD + '[train]\ncommand = ["python3", "train.py", "--lr={lr}"]\n'
    root = _task(tmp_path / "a", manifest, {"train.py": script})
    with pytest.raises(TaskError, match="no argparse default") as caught:
        load_task_dir(root)
    assert caught.value.field == "knobs.lr"
    _task(tmp_path / "a", manifest + "[knobs]\nlr = {low = 0.1, high = 1.0, default = 0.5}\n",
          {})
    assert load_task_dir(root).flag_defaults == (("lr", 0.5),)
    _task(tmp_path / "a", manifest.replace("[train]", 'editable = "train.py"\n[train]'), {})
    with pytest.raises(TaskError, match="leave editable out"):
        load_task_dir(root)


def test_relative_mount_targets_become_links_under_data_task(tmp_path: Path) -> None:
    manifest = load_task_dir(REPO / "examples/blobs-argparse")
    assert manifest.train is not None
    (mount,) = manifest.train.mounts
    assert (mount.source, mount.target, mount.link) == ("data/train", "/data/task/data/train",
                                                        "data/train")
