"""Surrogate "train.py": the real trainer's main knobs over a cheap, noisy response surface.

Used by tests and demos of the research loop: it reads like the real script (knobs as
top-level constants, one summary block at the end) and runs as a sandbox job, but
"training" is a closed-form function of the knobs that takes milliseconds. Its optimum
is away from the defaults, so a search can find real improvements; the noise (seeded by
TRIAL_SEED and the knob values) has the size of real val_bpb noise, about 3e-4.

Run as `python3 train.py`; writes its metrics as JSON to $BILEVEL_METRICS. Those are
for show: the research task computes the trial's value itself with `surrogate_value`
from the knobs it read out of the file (controller/research/tasks/surrogate.py), so a
job cannot forge its metric; the job only decides whether the configuration crashes.
"""

import json
import math
import os
import random
import time
from collections.abc import Mapping
from typing import Any

# Model shape
DEPTH = 8  # transformer layers
ASPECT_RATIO = 64  # model width = DEPTH * ASPECT_RATIO, rounded up to whole heads
HEAD_DIM = 128  # channels per attention head
WINDOW_PATTERN = "SSSL"  # S = half-context sliding window, L = full context

# Batch
TOTAL_BATCH_SIZE = 2**19  # tokens per optimizer step
DEVICE_BATCH_SIZE = 128  # sequences per forward pass

# Optimizer
EMBEDDING_LR = 0.6
UNEMBEDDING_LR = 0.004
MATRIX_LR = 0.04
SCALAR_LR = 0.5
WEIGHT_DECAY = 0.2
WARMUP_RATIO = 0.0  # fraction of the time budget spent warming up
WARMDOWN_RATIO = 0.5  # fraction of the time budget spent decaying to FINAL_LR_FRAC
FINAL_LR_FRAC = 0.0

NOISE_STD = 3e-4  # measured noise floor of val_bpb across seeds
MEMORY_LIMIT_GB = 80.0  # "GPU" memory; a larger configuration raises like CUDA OOM


def log_penalty(value: float, best: float, width: float) -> float:
    """Quadratic bowl in log space: 0 at `best`, 1 at a factor exp(width) away."""
    return (math.log(value / best) / width) ** 2


KNOB_NAMES = ("DEPTH", "ASPECT_RATIO", "HEAD_DIM", "WINDOW_PATTERN", "TOTAL_BATCH_SIZE",
              "DEVICE_BATCH_SIZE", "EMBEDDING_LR", "UNEMBEDDING_LR", "MATRIX_LR", "SCALAR_LR",
              "WEIGHT_DECAY", "WARMUP_RATIO", "WARMDOWN_RATIO", "FINAL_LR_FRAC")


def surrogate_value(k: Mapping[str, Any], seed: int, noise_std: float,
                    memory_limit_gb: float) -> tuple[float, float]:
    """(val_bpb, memory_gb) of the knob values `k` (a mapping with KNOB_NAMES) on `seed`.
    Pure: the controller calls this too, with the knobs it read from the file."""
    head = k["HEAD_DIM"]
    width = (k["DEPTH"] * k["ASPECT_RATIO"] + head - 1) // head * head  # whole heads
    if width // head < 1:
        raise ValueError(f"model width {width} holds no head of HEAD_DIM {head}")
    if k["TOTAL_BATCH_SIZE"] % (k["DEVICE_BATCH_SIZE"] * 2048) != 0:
        raise ValueError("TOTAL_BATCH_SIZE must be a multiple of DEVICE_BATCH_SIZE * 2048")
    memory_gb = 45.0 * (k["DEPTH"] / 8) * (width / 512) * (k["DEVICE_BATCH_SIZE"] / 128)
    if memory_gb > memory_limit_gb:
        raise MemoryError(f"CUDA out of memory: needs {memory_gb:.1f} GB")
    loss = 0.965
    loss += 0.010 * log_penalty(k["DEPTH"], 10, 0.35)
    loss += 0.006 * log_penalty(k["ASPECT_RATIO"], 64, 0.5)
    loss += 0.008 * log_penalty(k["TOTAL_BATCH_SIZE"], 2**18, 0.7)
    loss += 0.012 * log_penalty(k["EMBEDDING_LR"], 0.9, 0.8)
    loss += 0.004 * log_penalty(k["UNEMBEDDING_LR"], 0.004, 0.9)
    loss += 0.015 * log_penalty(k["MATRIX_LR"], 0.05, 0.6)
    loss += 0.003 * log_penalty(k["SCALAR_LR"], 0.5, 1.0)
    loss += 0.004 * ((k["WEIGHT_DECAY"] - 0.12) / 0.15) ** 2
    loss += 0.002 * (k["WARMUP_RATIO"] / 0.1) ** 2
    loss += 0.005 * ((k["WARMDOWN_RATIO"] - 0.6) / 0.3) ** 2
    loss += 0.002 * ((k["FINAL_LR_FRAC"] - 0.05) / 0.2) ** 2
    loss += {"SSSL": 0.0, "SSLL": -0.001, "SLSL": 0.0005, "L": 0.002}.get(
        k["WINDOW_PATTERN"], 0.01)
    values = tuple(k[name] for name in KNOB_NAMES)
    noise = random.Random(f"{seed}:{values!r}").gauss(0.0, noise_std)
    return loss + noise, memory_gb


def response(seed: int) -> tuple[float, float]:
    return surrogate_value(globals(), seed, NOISE_STD, MEMORY_LIMIT_GB)


def main():
    t0 = time.time()
    seed = int(os.environ.get("TRIAL_SEED", "0"))
    val_bpb, memory_gb = response(seed)
    elapsed = time.time() - t0
    print("---")
    print(f"val_bpb:          {val_bpb:.6f}")
    print(f"training_seconds: {elapsed:.3f}")
    print(f"peak_vram_mb:     {memory_gb * 1024:.1f}")
    print(f"depth:            {DEPTH}")
    metrics = {"val_bpb": val_bpb, "memory_gb": memory_gb, "training_seconds": elapsed}
    path = os.environ.get("BILEVEL_METRICS")
    if path:
        with open(path, "w") as handle:
            json.dump(metrics, handle)


if __name__ == "__main__":
    main()
