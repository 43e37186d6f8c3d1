"""`bilevel train` of a GPT preset: prepare data, train a train.py in the sandbox (or on the
host with --direct), print the summary (controller/research/tasks/trainer_run.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from trainer.data import prepare
from trainer.presets import PRESETS, get_preset


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `train` on an argparse subparsers object; sets `func=cmd_train`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "train", help="train and evaluate a train.py (sandboxed)",
        description="Train a train.py in the sandbox, then compute val_bpb with the "
                    "trusted evaluator, and print the summary block.")
    parser.add_argument("--preset", default="cpu-tiny", choices=sorted(PRESETS))
    parser.add_argument("--train-py", type=Path, default=None,
                        help="candidate train.py (default: the preset applied to trainer/train.py)")
    parser.add_argument("--runtime", default="auto", choices=("auto", "runc", "runsc"),
                        help="gVisor (runsc) or runc; auto (default): runsc where the "
                             "engine has it registered, else runc with a warning")
    parser.add_argument("--data", default=None,
                        help="text source: 'shakespeare', a folder of .txt, or parquet shards")
    parser.add_argument("--gpu", action="append", default=[], metavar="ID",
                        help="GPU id to give the job (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON too")
    parser.add_argument("--direct", action="store_true",
                        help="run on the host without a sandbox (trusted code only)")
    parser.set_defaults(func=cmd_train)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    # Here, not at the top: `bilevel train --help` imports no Docker SDK or torch.
    from controller.research.tasks.trainer_run import run_in_sandbox
    from controller.sandbox.backend_config import ExecutorConfig
    from controller.sandbox.factory import make_backend
    from controller.sandbox.image import ensure_local_image
    from trainer.direct import run_direct

    preset = get_preset(args.preset)
    if args.data:
        preset = replace(preset, data=replace(preset.data, source=args.data))
    # A candidate file runs as written; otherwise the preset's knobs go into train.py.
    source = (args.train_py.read_text(encoding="utf-8") if args.train_py
              else preset.train_source())
    data = prepare(preset.data)
    print(f"data: {data.path} (tokenizer {data.meta['tokenizer']}, vocab "
          f"{data.meta['vocab_size']})", file=sys.stderr)
    if args.direct:
        outcome = run_direct(source, preset, data)
    else:
        ensure_local_image()  # builds once per checkout; reused afterwards
        # --gpu makes one GPU slot of those ids: the backend hands GPUs out, jobs never
        # name their own (a job that picked its GPU could take another run's).
        backend = make_backend(ExecutorConfig(
            runtime=args.runtime, gpu_slots=(tuple(args.gpu),) if args.gpu else ()))
        try:
            outcome = run_in_sandbox(backend, source, preset, data, runtime=backend.runtime)
        finally:
            backend.close()
    print(outcome.summary())
    if args.json:
        print(json.dumps(outcome.metrics, sort_keys=True))
    if not outcome.ok:
        status = f" ({outcome.status})" if outcome.status else ""  # e.g. over_budget
        print(f"error{status}: {outcome.error}", file=sys.stderr)
        stderr = str(getattr(outcome.train, "stderr", "") or "")
        if stderr:
            print(stderr[-4000:], file=sys.stderr)
        return 1
    return 0
