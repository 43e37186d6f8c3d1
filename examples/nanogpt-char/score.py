"""Trusted scorer: the validation loss of out/ckpt.pt (phase 1's, untrusted) on val.bin.

The checkpoint is hostile input: it is never unpickled beyond what
torch.load(weights_only=True) accepts (no code runs), its model_args must be plain
values within bounds, and its weights must be exactly those of this task's own GPT
(model.py, built here) - trainer.checkpoint checks keys, shapes, dtypes and finiteness.
The loss is the mean cross-entropy over fixed, non-overlapping windows of val.bin, the
same for every candidate. One JSON object on the last line of stdout.
"""

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from model import GPT, GPTConfig

from trainer.checkpoint import CheckpointError, load_state_dict

CKPT = "out/ckpt.pt"
DATA = Path("data/shakespeare_char")  # mounted read-only (a link in the working copy)
MAX_BYTES = 64 << 20
MAX_PARAMS = 8_000_000
EVAL_BLOCK = 64  # context of each window: the baseline's block_size
EVAL_WINDOWS = 1024
EVAL_BATCH = 64


def refuse(reason: str) -> SystemExit:
    return SystemExit(f"{CKPT} refused: {reason}")


def model_args(vocab_size: int) -> dict[str, Any]:
    """The checkpoint's model_args, read with weights_only=True and bounded."""
    if not os.path.isfile(CKPT) or os.path.getsize(CKPT) > MAX_BYTES:
        raise refuse(f"missing or over {MAX_BYTES} bytes")
    try:
        ckpt = torch.load(CKPT, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError and the like: not plain data
        raise refuse(f"not loadable with weights_only=True: {type(exc).__name__}") from None
    args = ckpt.get("model_args") if isinstance(ckpt, dict) else None
    if not isinstance(args, dict):
        raise refuse("no model_args dict")
    ints = {"n_layer": (1, 16), "n_head": (1, 32), "n_embd": (8, 1024),
            "block_size": (EVAL_BLOCK, 4096), "vocab_size": (vocab_size, vocab_size)}
    for key, (low, high) in ints.items():
        value = args.get(key)
        if type(value) is not int or not low <= value <= high:
            raise refuse(f"model_args {key}={value!r} is not an int in [{low}, {high}]")
    if type(args.get("bias")) is not bool or args["n_embd"] % args["n_head"]:
        raise refuse("model_args bias is not a bool, or n_embd is not a multiple of n_head")
    n, d = args["n_layer"], args["n_embd"]
    if 12 * n * d * d + (vocab_size + args["block_size"]) * d > MAX_PARAMS:
        raise refuse(f"a model of over {MAX_PARAMS} parameters")
    return {k: args[k] for k in (*ints, "bias")} | {"dropout": 0.0}


def val_loss(model: GPT) -> float:
    """Mean loss over the first EVAL_WINDOWS non-overlapping windows of val.bin."""
    data = np.fromfile(DATA / "val.bin", dtype=np.uint16).astype(np.int64)
    count = min(EVAL_WINDOWS, (len(data) - 1) // EVAL_BLOCK)
    starts = np.arange(count) * EVAL_BLOCK
    x = torch.from_numpy(np.stack([data[s:s + EVAL_BLOCK] for s in starts]))
    y = torch.from_numpy(np.stack([data[s + 1:s + 1 + EVAL_BLOCK] for s in starts]))
    total = 0.0
    model.eval()
    with torch.no_grad():
        for i in range(0, count, EVAL_BATCH):
            _, loss = model(x[i:i + EVAL_BATCH], y[i:i + EVAL_BATCH])
            total += float(loss) * len(x[i:i + EVAL_BATCH])
    return total / count


def main() -> None:
    vocab_size = json.loads((DATA / "meta.json").read_text())["vocab_size"]
    args = model_args(vocab_size)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**args))
    try:
        model.load_state_dict(load_state_dict(CKPT, model, key="model", max_bytes=MAX_BYTES))
    except CheckpointError as exc:
        raise SystemExit(str(exc)) from None
    loss = val_loss(model)
    if not math.isfinite(loss):
        raise SystemExit(f"val_loss is not finite: {loss}")
    print(json.dumps({"val_loss": loss, "val_bpc": loss / math.log(2),
                      "params": sum(p.numel() for p in model.parameters())}))


if __name__ == "__main__":
    main()
