"""What the trusted baseline's own runs measure on this host, and the limits taken from it.

The task's unedited train.py is trusted, so its runs say what an honest trial needs here,
under this runtime. Phase 1's run time minus its training seconds is the honest overhead
(interpreter and torch start-up, data load, model build, the uncounted warm-up steps, the
export); phase 2's run time per archive byte is how fast this host evaluates.

- A candidate's training bound is its budget plus an allowance of OVERHEAD_MARGIN times
  the largest overhead measured plus the preset's floor (`allowance_floor_seconds`).
- Its evaluation's wall limit is EVAL_MARGIN times what the measured speed predicts for
  its archive (seconds per byte of the slowest baseline evaluation times its size), never
  below the preset's fixed limit and at most EVAL_CAP times it.

Until a baseline run is measured the preset's fixed allowance and evaluation limit apply;
the bound a trial got, and from what, is recorded on its metrics (`train_bound`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from trainer.presets import Preset

OVERHEAD_MARGIN = 1.5  # times the largest honest overhead measured
EVAL_MARGIN = 3.0  # times the evaluation time the measured speed predicts
EVAL_CAP = 10.0  # the evaluation limit never exceeds this many times the preset's


@dataclass(frozen=True)
class Measurement:
    """One baseline run: phase 1's overhead, and phase 2's run time for its archive."""

    overhead_seconds: float
    eval_seconds: float
    archive_bytes: int


@dataclass(frozen=True)
class Allowance:
    """Phase 1's time beyond the budget, and where that number comes from."""

    seconds: float
    source: str


class HostCalibration:
    """The baseline measurements of one task on this host; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: list[Measurement] = []

    @property
    def measured(self) -> bool:
        with self._lock:
            return bool(self._runs)

    def record(self, run_seconds: float, training_seconds: float, eval_seconds: float,
               archive_bytes: int) -> Measurement:
        """Add one baseline run: phase 1's sandbox-measured run time and the training
        seconds the (trusted) baseline reported, phase 2's run time and archive size."""
        if archive_bytes <= 0 or run_seconds < 0 or eval_seconds < 0:
            raise ValueError(f"not a measurement: run {run_seconds} s, eval {eval_seconds} "
                             f"s, archive {archive_bytes} bytes")
        run = Measurement(max(0.0, run_seconds - training_seconds), eval_seconds,
                          archive_bytes)
        with self._lock:
            self._runs.append(run)
        return run

    def allowance(self, preset: Preset) -> Allowance:
        with self._lock:
            runs = list(self._runs)
        if not runs:
            return Allowance(preset.train_allowance_seconds,
                             f"the preset's fixed {preset.train_allowance_seconds:g} s (no "
                             "baseline run measured yet)")
        overhead = max(r.overhead_seconds for r in runs)
        seconds = OVERHEAD_MARGIN * overhead + preset.allowance_floor_seconds
        return Allowance(round(seconds, 2), (
            f"{OVERHEAD_MARGIN:g} x {overhead:.2f} s, the largest honest overhead of "
            f"{len(runs)} baseline run(s) on this host, + {preset.allowance_floor_seconds:g} s"))

    def eval_seconds(self, preset: Preset, archive_bytes: int) -> float:
        """Phase 2's wall limit for an archive of `archive_bytes`."""
        fixed = preset.eval_limits.wall_seconds
        with self._lock:
            runs = list(self._runs)
        if not runs:
            return fixed
        per_byte = max(r.eval_seconds / r.archive_bytes for r in runs)
        predicted = EVAL_MARGIN * per_byte * max(archive_bytes, 0)
        return round(min(EVAL_CAP * fixed, max(fixed, predicted)), 2)

    def to_json(self) -> dict[str, Any]:
        """For a trial's metrics: what the limits were taken from."""
        with self._lock:
            return {"baseline_runs": [{"overhead_s": round(r.overhead_seconds, 3),
                                       "eval_s": round(r.eval_seconds, 3),
                                       "archive_bytes": r.archive_bytes} for r in self._runs]}
