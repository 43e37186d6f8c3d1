"""Named experiment sizes: data settings + knob overrides for train.py + sandbox limits.

`cpu-tiny` trains a tiny byte-level model in about 15 s on two CPU cores (tests, demos);
`gpu-5min` is the autoresearch-sized run: 300 s of training, depth 8, BPE vocab 8192.

Phase 1's time bound is the budget plus an allowance for what an honest training phase
needs beyond it (interpreter and torch start-up, data load, model build, the uncounted
warm-up steps, compilation, the export). It is measured, not guessed: the trusted
baseline's own runs give the honest overhead on this host (trainer/calibration.py), and a
candidate gets 1.5 times the largest of them plus `allowance_floor_seconds`. Until a
baseline run is measured, `train_allowance_seconds` applies (it bounds the baseline's own
runs too, which are trusted). On a 2-core host at load averages of 1-6, an honest
cpu-tiny phase 1 needed 5.6-9.2 s (runc) and 6.6-10.8 s (runsc) beyond its 15 s of
training, so a candidate's bound came to 28-34 s. gpu-5min's numbers (180 s, floor 60 s
for torch.compile's spread between model shapes) are estimates, not yet measured on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.data import DataConfig
from trainer.knobs import write_knobs

TRAIN_PY = Path(__file__).with_name("train.py")


@dataclass(frozen=True)
class PhaseLimits:
    """Sandbox bounds of one phase (mapped onto controller.sandbox.spec.Limits)."""

    wall_seconds: float
    memory_bytes: int
    cpus: float
    returned_file_bytes: int = 64 << 20
    tmp_bytes: int = 256 << 20
    disk_bytes: int = 1 << 30
    pids: int = 256


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    data: DataConfig
    knobs: dict[str, Any]
    train_limits: PhaseLimits
    eval_limits: PhaseLimits
    gpu: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)
    train_allowance_seconds: float = 45.0  # phase-1 time beyond the budget, unmeasured
    allowance_floor_seconds: float = 5.0  # added to the measured allowance

    @property
    def budget_seconds(self) -> float:
        """The training-time budget this preset defines (TIME_BUDGET_SECONDS)."""
        return float(self.knobs["TIME_BUDGET_SECONDS"])

    def train_source(self, base: str | None = None) -> str:
        """train.py (or `base`) with this preset's knob values written in."""
        source = TRAIN_PY.read_text(encoding="utf-8") if base is None else base
        return write_knobs(source, self.knobs)


_GIB = 1 << 30

PRESETS: dict[str, Preset] = {
    "cpu-tiny": Preset(
        name="cpu-tiny",
        description="2-layer byte-level GPT, 15 s of training on CPU (tests and demos)",
        data=DataConfig(tokenizer="byte", seq_len=256, eval_batch_size=16, eval_tokens=65536),
        knobs={"DEPTH": 2, "ASPECT_RATIO": 64, "HEAD_DIM": 32, "SEQ_LEN": 256,
               "TOTAL_BATCH_SIZE": 2**12, "DEVICE_BATCH_SIZE": 16,
               "TIME_BUDGET_SECONDS": 15.0, "WARMUP_STEPS": 2, "COMPILE": False},
        train_limits=PhaseLimits(wall_seconds=120, memory_bytes=3 * _GIB, cpus=2.0),
        eval_limits=PhaseLimits(wall_seconds=90, memory_bytes=2 * _GIB, cpus=2.0),
    ),
    "gpu-5min": Preset(
        name="gpu-5min",
        description="depth-8 GPT, BPE 8192, 300 s of training on one GPU (autoresearch size)",
        data=DataConfig(tokenizer="bpe", vocab_size=8192, seq_len=2048, eval_batch_size=16,
                        eval_tokens=1 << 24),
        knobs={"DEPTH": 8, "ASPECT_RATIO": 64, "HEAD_DIM": 128, "SEQ_LEN": 2048,
               "TOTAL_BATCH_SIZE": 2**18, "DEVICE_BATCH_SIZE": 32,
               "TIME_BUDGET_SECONDS": 300.0, "WARMUP_STEPS": 10, "COMPILE": True},
        train_limits=PhaseLimits(wall_seconds=600, memory_bytes=64 * _GIB, cpus=8.0,
                                 returned_file_bytes=1 << 30, disk_bytes=4 * _GIB),
        eval_limits=PhaseLimits(wall_seconds=300, memory_bytes=32 * _GIB, cpus=8.0),
        gpu=True, train_allowance_seconds=180.0, allowance_floor_seconds=60.0,
        notes=("The Shakespeare train split is ~3 M BPE tokens, so 300 s on an H100 "
               "passes over it many times; point --data at a larger corpus to avoid "
               "measuring memorisation.",),
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
