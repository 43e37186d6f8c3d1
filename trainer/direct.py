"""What a train.py run produced, and the run without a sandbox.

`RunOutcome` and `combine` are shared by both ways to run a candidate: sandboxed, on the
controller (controller/research/tasks/trainer_run.py), and `run_direct`, both phases as
host subprocesses, for benchmarks on machines without Docker (a GPU box) and for fast
tests. `run_direct` isolates nothing: never use it for LLM code. Nothing here imports
the controller, so this module ships in the sandbox image with the rest of trainer/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.data import PreparedData, prepare
from trainer.presets import Preset
from trainer.shards import DATA_DIR_ENV
from trainer.summary import (
    FIXED_STEPS_ENV,
    METRICS_ENV,
    MODEL_FILE,
    OUT_DIR_ENV,
    SEED_ENV,
    format_summary,
)

# Keys copied from the training job's self-reported metrics, with their types.
TRAIN_KEYS: dict[str, tuple[type, ...]] = {
    "training_seconds": (int, float), "total_seconds": (int, float),
    "peak_vram_mb": (int, float), "peak_rss_mb": (int, float),
    "mfu_percent": (int, float, type(None)), "total_tokens": (int,),
    "total_tokens_M": (int, float), "tokens_per_second": (int, float, type(None)),
    "num_steps": (int,), "num_params": (int,), "num_params_M": (int, float),
    "depth": (int,), "final_train_loss": (int, float, type(None)), "device": (str,),
}
EVAL_KEYS = ("val_bpb", "nats", "target_bytes", "target_tokens", "eval_seconds",
             "probe_max_diff", "probe_mean_gain", "eval_num_params", "eval_device")


@dataclass
class RunOutcome:
    """Combined metrics (val_bpb from the trusted phase only) and both job results.
    `status` is "over_budget" when phase 1 broke its training bound (no evaluation ran:
    controller/research/tasks/trainer_run.py)."""

    ok: bool
    metrics: dict[str, Any]
    error: str = ""
    train: Any = None  # JobResult (or a direct-run record)
    eval: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    status: str = ""

    def summary(self) -> str:
        return format_summary(self.metrics)


def combine(train_metrics: Any, eval_metrics: Any) -> dict[str, Any]:
    """Trusted val_bpb plus the type-checked training figures; nothing else passes."""
    out: dict[str, Any] = {}
    if isinstance(train_metrics, dict):
        for key, types in TRAIN_KEYS.items():
            value = train_metrics.get(key)
            if isinstance(value, types) and not isinstance(value, bool):
                out[key] = value
    if isinstance(eval_metrics, dict):
        for key in EVAL_KEYS:
            if key in eval_metrics:
                out[key] = eval_metrics[key]
    out.setdefault("val_bpb", None)
    return out


@dataclass
class DirectPhase:
    """What a host subprocess phase produced (the direct-mode stand-in for JobResult)."""

    returncode: int
    stdout: str
    stderr: str
    metrics: dict[str, Any]
    seconds: float


def _run_phase(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> DirectPhase:
    metrics_file = cwd / ".metrics.json"
    metrics_file.unlink(missing_ok=True)
    started = time.monotonic()
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**env, METRICS_ENV: str(metrics_file)}, check=False)
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    return DirectPhase(proc.returncode, proc.stdout, proc.stderr, metrics,
                       time.monotonic() - started)


def run_direct(train_py: str, preset: Preset, data: PreparedData | None = None,
               workdir: Path | None = None, seed: int = 42) -> RunOutcome:
    """Both phases as host subprocesses (no isolation: trusted code and benchmarks only).

    The training process sees a data folder holding only the train split, like the
    sandbox; the evaluator gets only the archive and the val split.
    """
    data = data or prepare(preset.data)
    root = Path(workdir or tempfile.mkdtemp(prefix="bilevel-run-"))
    train_dir, eval_dir, train_data = root / "train", root / "eval", root / "data"
    for folder in (train_dir, eval_dir, train_data):
        folder.mkdir(parents=True, exist_ok=True)
    if not (train_data / "train").exists():
        (train_data / "train").symlink_to(data.train_dir.resolve())
    (train_dir / "train.py").write_text(train_py, encoding="utf-8")
    package_root = str(Path(__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BILEVEL_") and k != FIXED_STEPS_ENV}
    env.update(PYTHONPATH=package_root, PYTHONUNBUFFERED="1", **{SEED_ENV: str(int(seed))})
    train = _run_phase([sys.executable, "train.py"], train_dir,
                       {**env, DATA_DIR_ENV: str(train_data), OUT_DIR_ENV: str(train_dir / "out")},
                       preset.train_limits.wall_seconds)
    model = train_dir / "out" / MODEL_FILE
    if train.returncode != 0 or not model.exists():
        tail = train.stderr.strip().splitlines()[-1:] or ["no model archive written"]
        return RunOutcome(False, combine(train.metrics, None),
                          f"training failed: {tail[0]}", train, None)
    (eval_dir / MODEL_FILE).write_bytes(model.read_bytes())
    evaluation = _run_phase([sys.executable, "-P", "-m", "trainer.evaluate", "--model",
                             MODEL_FILE, "--data", str(data.val_dir)], eval_dir, env,
                            preset.eval_limits.wall_seconds)
    metrics = combine(train.metrics, evaluation.metrics)
    if evaluation.returncode != 0:
        tail = evaluation.stderr.strip().splitlines()[-1:] or ["evaluation failed"]
        return RunOutcome(False, metrics, f"evaluation failed: {tail[0]}", train, evaluation)
    return RunOutcome(True, metrics, "", train, evaluation)
