"""Names and formats shared by the training job and the host side, without torch:
the controller imports these, and it need not install torch to do so."""

from __future__ import annotations

from typing import Any

OUT_DIR_ENV = "BILEVEL_OUT_DIR"
METRICS_ENV = "BILEVEL_METRICS"
SEED_ENV = "TRIAL_SEED"  # the trial's seed, set by the controller (harness.seed)
# Set by the controller for the seed check: the TrainingClock stops after exactly this
# many steps, whatever the time, so a run is a function of its code and seed.
FIXED_STEPS_ENV = "TRIAL_FIXED_STEPS"
MODEL_FILE = "model.bilevel"
SUMMARY_KEYS = ("val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                "total_tokens_M", "num_steps", "num_params_M", "depth")


def format_summary(metrics: dict[str, Any]) -> str:
    """Karpathy's grep-able block: one `key: value` per line, in a fixed order."""
    lines = ["---"]
    for key in SUMMARY_KEYS:
        value = metrics.get(key)
        if key == "val_bpb" and value is None:
            continue  # not known to the training job: the evaluator prints it
        if isinstance(value, float):
            digits = 6 if key == "val_bpb" else 2 if key != "peak_vram_mb" else 1
            text = f"{value:.{digits}f}"
        else:
            text = "n/a" if value is None else str(value)
        lines.append(f"{key + ':':<18}{text}")
    return "\n".join(lines)
