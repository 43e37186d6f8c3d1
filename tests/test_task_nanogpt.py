"""examples/nanogpt-char: Karpathy's nanoGPT as it is, a task whose knobs are its
lowercase config names; its trusted scorer refuses a hostile checkpoint, and a run on
the real engine trains and scores it."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from controller.research.tasks.manifest import load_task_dir
from tests.test_cli_commands import bilevel

TASK = Path(__file__).resolve().parents[1] / "examples" / "nanogpt-char"
DATA = TASK / "data" / "shakespeare_char"
CONFIG = "config/train_bilevel_char.py"


@pytest.fixture(scope="module")
def prepared() -> Path:
    """The example's data, built by its prepare.py from the project's corpus."""
    if not (DATA / "meta.json").is_file():
        subprocess.run([sys.executable, str(TASK / "prepare.py")], check=True, timeout=120)
    return DATA


def test_the_knobs_are_nanogpts_lowercase_config_names(prepared: Path) -> None:
    task = load_task_dir(TASK)
    assert task.editable == CONFIG and task.metric == "val_loss"
    names = {k.name for k in task.knobs}
    assert {"learning_rate", "batch_size", "n_layer", "n_embd", "dropout"} <= names
    assert all(task.document.origin(n) == f"top-level constant {n} of {CONFIG}" for n in names)


def _score(tmp_path: Path, checkpoint: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """score.py in a working copy like phase 2's, with `checkpoint` as out/ckpt.pt."""
    for name in ("score.py", "model.py"):
        shutil.copy(TASK / name, tmp_path / name)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "shakespeare_char").symlink_to(DATA)
    (tmp_path / "out").mkdir()
    torch.save(checkpoint, tmp_path / "out" / "ckpt.pt")
    return subprocess.run([sys.executable, "score.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _untrained() -> dict[str, Any]:
    """An honest nanoGPT checkpoint of an untrained model (the task's own model.py)."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", TASK / "model.py")
    assert spec is not None and spec.loader is not None
    model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model)
    vocab = json.loads((DATA / "meta.json").read_text())["vocab_size"]
    args = dict(n_layer=1, n_head=4, n_embd=32, block_size=64, bias=False, vocab_size=vocab,
                dropout=0.0)
    return {"model": model.GPT(model.GPTConfig(**args)).state_dict(), "model_args": args}


def test_the_scorer_refuses_a_pickle_payload_and_scores_an_honest_checkpoint(
        tmp_path: Path, prepared: Path) -> None:
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
            return (exec, (f"open({str(marker)!r}, 'w'); print('{{\"val_loss\": 0.0}}')",))

    (tmp_path / "hostile").mkdir()
    hostile = _score(tmp_path / "hostile", {**_untrained(), "config": Payload()})
    assert hostile.returncode != 0 and "val_loss" not in hostile.stdout
    assert "weights_only=True" in hostile.stderr and not marker.exists()

    (tmp_path / "honest").mkdir()
    honest = _score(tmp_path / "honest", _untrained())
    assert honest.returncode == 0, honest.stderr
    loss = json.loads(honest.stdout.strip().splitlines()[-1])["val_loss"]
    assert 3.8 < loss < 4.8  # untrained: about ln(vocab) = ln(76) = 4.33


@pytest.mark.docker
def test_run_nanogpt_as_it_is_with_its_trusted_scorer(
        tmp_path: Path, sandbox_image: str, prepared: Path) -> None:
    local = ("--state-dir", str(tmp_path), "--image", sandbox_image, "--namespace",
             "pytest-task-nanogpt")
    done = bilevel("run", "--task", str(TASK), "--trials", "1", "--final-seeds", "0",
                   "--seed", "1", *local)
    assert done.returncode == 0, done.stderr
    run_id, _, summary = done.stdout.strip().partition(": ")
    assert "baseline val_loss" in summary and "val_bpb" not in summary, summary
    tsv = bilevel("artifact", run_id, "results.tsv", *local).stdout.splitlines()
    assert tsv[0].split("\t")[1] == "val_loss"
    rows = [line.split("\t") for line in tsv[1:]]
    assert len(rows) == 2 and rows[0][-1] == "baseline"
    assert 1.5 < float(rows[0][1]) < 3.0  # untrained 4.33; 500 steps of a tiny GPT: ~2.4
