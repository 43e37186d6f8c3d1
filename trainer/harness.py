"""Trusted helpers that train.py imports: data, clock, seed, divergence check, save, report.

Installed read-only in the sandbox image, so an edit of train.py cannot change how they
work. They run inside the candidate's process, though, so a candidate can still bypass
them (rebind the clock's budget, ignore the seed): the guarantees are kept outside it.
The trusted side bounds the training phase's wall and CPU time (the controller's
controller/research/tasks/trainer_run.py), flags a candidate whose runs at a fixed step
count ($TRIAL_FIXED_STEPS) on two seeds are bit-identical, and val_bpb comes only from
the separate evaluator.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from trainer import archive, flops
from trainer.shards import Split, data_dir, load_split
from trainer.summary import (
    FIXED_STEPS_ENV,
    METRICS_ENV,
    MODEL_FILE,
    OUT_DIR_ENV,
    SEED_ENV,
    format_summary,
)

PROCESS_START = time.time()
# The trial's seed, chosen by the controller. Read once at import, before train.py runs
# any line of its own, so a later change of the environment does not move it.
_TRIAL_SEED = os.environ.get(SEED_ENV, "")
# The seed check's step count (0: time-budgeted training), read at import like the seed.
_FIXED_STEPS = os.environ.get(FIXED_STEPS_ENV, "")


def fixed_steps() -> int:
    """$TRIAL_FIXED_STEPS: the step count of a seed-check run, or 0 for a normal run."""
    if not _FIXED_STEPS:
        return 0
    try:
        steps = int(_FIXED_STEPS)
    except ValueError:
        steps = -1
    if steps < 1:
        raise ValueError(f"{FIXED_STEPS_ENV}={_FIXED_STEPS!r} is not a positive step count")
    return steps


def seed(default: int) -> int:
    """The trial's seed ($TRIAL_SEED, set by the controller for every trial), or
    `default` when train.py is run by hand. A malformed value is an error, not a default."""
    if not _TRIAL_SEED:
        return int(default)
    try:
        return int(_TRIAL_SEED)
    except ValueError:
        raise ValueError(f"{SEED_ENV}={_TRIAL_SEED!r} is not an integer seed") from None


class TrainingDiverged(RuntimeError):
    """The training loss became NaN, infinite or absurdly large."""


def pick_device() -> torch.device:
    """CUDA when present, else CPU (fp32)."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return torch.device("cuda")
    return torch.device("cpu")


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA; full precision elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_data() -> Split:
    """The train split, from $BILEVEL_DATA_DIR/train (default /data/train)."""
    return load_split(data_dir() / "train")


def device_batches(data: Split, batch_size: int, seq_len: int, seed: int,
                   device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Random training windows as (inputs, targets) int64 tensors on `device`."""
    for x, y in data.batches(batch_size, seq_len, seed):
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        if device.type == "cuda":
            xt, yt = xt.pin_memory(), yt.pin_memory()
        yield xt.to(device, non_blocking=True), yt.to(device, non_blocking=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class TrainingClock:
    """Counts training wall time after the first `warmup_steps` steps, up to a budget.

    This drives the schedule and tells an honest train.py when to stop; it is no bound
    (the candidate owns this object). The bound is the controller's (TrainBound in
    controller/research/tasks/trainer_run.py), measured outside.

    With `max_steps` > 0 the run also stops after that many steps and the schedule
    follows steps instead of time. Under $TRIAL_FIXED_STEPS (the controller's seed
    check) the run stops after exactly that many steps and the budget is not consulted,
    so two runs of one code on one seed are identical whatever the host's speed (with
    deterministic kernels, as on CPU).
    """

    def __init__(self, budget_seconds: float, warmup_steps: int, device: torch.device,
                 max_steps: int = 0) -> None:
        self.budget_seconds = float(budget_seconds)
        self.warmup_steps = int(warmup_steps)
        self.fixed = fixed_steps() > 0
        self.max_steps = fixed_steps() or int(max_steps)
        self.device = device
        self.training_seconds = 0.0
        self.steps = 0
        self._t0 = 0.0

    def start_step(self) -> None:
        synchronize(self.device)
        self._t0 = time.perf_counter()

    def end_step(self) -> None:
        synchronize(self.device)
        if self.steps >= self.warmup_steps:
            self.training_seconds += time.perf_counter() - self._t0
        self.steps += 1

    def progress(self) -> float:
        """Fraction of the budget used, in [0, 1]; drives the LR schedule."""
        if self.max_steps > 0:
            return min(1.0, self.steps / self.max_steps)
        if self.budget_seconds <= 0:
            return 1.0
        return min(1.0, self.training_seconds / self.budget_seconds)

    def done(self) -> bool:
        if self.max_steps > 0 and self.steps >= self.max_steps:
            return True
        return not self.fixed and self.training_seconds >= self.budget_seconds


def check_loss(loss: float, step: int, max_loss: float) -> None:
    """Fail fast with a clear message instead of training on garbage."""
    if not math.isfinite(loss) or loss > max_loss:
        raise TrainingDiverged(
            f"training loss is {loss} at step {step} (limit {max_loss}): the run diverged; "
            "lower the learning rates or check the model change")


def out_dir() -> Path:
    """Where job outputs go: $BILEVEL_OUT_DIR, else /job/out in the sandbox, else ./out."""
    if OUT_DIR_ENV in os.environ:
        return Path(os.environ[OUT_DIR_ENV])
    return Path("/job/out") if Path("/job/out").is_dir() else Path("out")


def save_model(model: torch.nn.Module, data: Split, device: torch.device) -> Path:
    """Export the model for the trusted evaluator with the fixed evaluation input shape."""
    example = torch.zeros((data.eval_batch_size, data.seq_len), dtype=torch.long, device=device)
    path = out_dir() / MODEL_FILE
    size = archive.save_archive(path, model, example)
    print(f"saved model for evaluation: {path} ({size / 1e6:.1f} MB)")
    return path


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def write_metrics(metrics: dict[str, Any]) -> None:
    """Write the metrics JSON to $BILEVEL_METRICS (set by the sandbox), if set."""
    path = os.environ.get(METRICS_ENV)
    if path:
        Path(path).write_text(json.dumps(metrics, sort_keys=True), encoding="utf-8")


def finish(*, training_seconds: float, num_steps: int, total_tokens: int,
           training_tokens: int, num_params: int, depth: int, flops_per_token: float,
           final_loss: float, device: torch.device) -> dict[str, Any]:
    """Record and print the training job's metrics (everything but val_bpb)."""
    name = device_name(device)
    peak_mb = torch.cuda.max_memory_allocated() / 1024**2 if device.type == "cuda" else 0.0
    mfu = flops.mfu_percent(flops_per_token, training_tokens, training_seconds, name)
    metrics: dict[str, Any] = {
        "training_seconds": training_seconds,
        "total_seconds": time.time() - PROCESS_START,
        "peak_vram_mb": peak_mb,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "mfu_percent": mfu,
        "total_tokens": total_tokens,
        "total_tokens_M": round(total_tokens / 1e6, 3),
        "tokens_per_second": training_tokens / training_seconds if training_seconds else None,
        "num_steps": num_steps,
        "num_params": num_params,
        "num_params_M": round(num_params / 1e6, 3),
        "depth": depth,
        "final_train_loss": final_loss if math.isfinite(final_loss) else None,
        "device": name,
    }
    write_metrics(metrics)
    print(format_summary(metrics))
    return metrics
