"""Trusted evaluation: val_bpb of an archived model on the validation split.

Run as ``python -P -m trainer.evaluate --model model.bilevel`` in a container that has
the validation split mounted and no candidate Python code: the model arrives as data
(see trainer.archive) and only allowlisted ATen ops run.

val_bpb = sum of next-token cross-entropy (nats) / (ln 2 * UTF-8 bytes of the targets),
with zero-byte (special) targets left out of both sums — tokenizer independent.

Because an edited train.py could make the model peek at later tokens (drop the causal
mask, read other rows of the batch), every batch is also run a second time with each
row's suffix after a random cut replaced and the rows shuffled; the log-probabilities
up to the cut must not change. Rows are cut with a one-token gap so no row holds the
target of another, and batches mix rows from across the split in an order fixed by the
archive's hash (reproducible, yet unknown when the model was trained).

The probe is only sound for a pure model: one that remembered the scored batch could
replay its logits on the probe pass. An archived model is pure by
construction: only side-effect-free ATen ops load, and every call — scored pass and
probe alike — is a fresh instance with its own copies of the weights (trainer.archive).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainer import harness
from trainer.archive import load_archive
from trainer.shards import Split, data_dir, load_split
from trainer.summary import MODEL_FILE

Model = Callable[[torch.Tensor], torch.Tensor]
PROBE_MAX_DIFF_NATS = 1e-2  # per-position log-prob change allowed by numerics
PROBE_MEAN_GAIN_NATS = 1e-3  # average target log-prob advantage allowed over all probes


class CausalityViolation(RuntimeError):
    """The model's predictions depend on tokens it should not see yet."""


@dataclass(frozen=True)
class EvalResult:
    val_bpb: float
    nats: float
    target_bytes: int
    target_tokens: int
    rows: int
    eval_seconds: float
    probe_max_diff: float
    probe_mean_gain: float


def _rows(tokens: np.ndarray, seq_len: int, max_tokens: int) -> np.ndarray:
    """Non-overlapping rows of seq_len + 1 tokens (inputs, then shifted targets)."""
    usable = min(len(tokens), max_tokens)
    n = usable // (seq_len + 1)
    if n == 0:
        raise ValueError(f"validation split has {usable} tokens, fewer than one row")
    return np.asarray(tokens[: n * (seq_len + 1)], dtype=np.int64).reshape(n, seq_len + 1)


@torch.no_grad()
def evaluate_bpb(model: Model, split: Split, batch_size: int, device: torch.device,
                 seed: int = 0, max_tokens: int | None = None, probe: bool = True) -> EvalResult:
    """Score `model` (idx (B, T) -> logits (B, T, V)) on the split; see the module doc."""
    started = time.perf_counter()
    seq_len = split.seq_len
    limit = max_tokens or int(split.meta.get("eval_tokens", len(split.tokens)))
    rows = _rows(split.tokens, seq_len, limit)
    table = torch.from_numpy(split.token_bytes.astype(np.int64)).to(device)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows))
    nats, nbytes, ntok = 0.0, 0, 0
    max_diff, gain_sum, gain_count = 0.0, 0.0, 0
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        real = len(chosen)
        if real < batch_size:  # pad the last batch; padded rows are not scored
            chosen = np.concatenate([chosen, order[: batch_size - real]])
        batch = torch.from_numpy(rows[chosen]).to(device)
        x, y = batch[:, :-1], batch[:, 1:]
        logp = _log_probs(model, x, split.vocab_size)
        nll = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)[:real].double()
        weights = table[y[:real]]
        scored = weights > 0
        nats += float(nll[scored].sum())
        nbytes += int(weights.sum())
        ntok += int(scored.sum())
        if probe:
            diff, gain = _probe(model, x, y, logp, rows, rng, split.vocab_size)
            max_diff = max(max_diff, diff)
            gain_sum += gain
            gain_count += batch_size
    if probe and max_diff > PROBE_MAX_DIFF_NATS:
        raise CausalityViolation(
            f"the model's log-probabilities changed by up to {max_diff:.3g} nats when only "
            "later tokens or other rows changed: it must be causal (see trainer.evaluate)")
    mean_gain = gain_sum / max(1, gain_count)
    if probe and mean_gain > PROBE_MEAN_GAIN_NATS:
        raise CausalityViolation(
            f"the model predicts targets {mean_gain:.3g} nats better when it can see later "
            "tokens: it must be causal")
    if nbytes == 0:
        raise ValueError("no scored validation bytes")
    return EvalResult(nats / (math.log(2) * nbytes), nats, nbytes, ntok, len(rows),
                      time.perf_counter() - started, max_diff, mean_gain)


def _log_probs(model: Model, x: torch.Tensor, vocab_size: int) -> torch.Tensor:
    with harness.autocast(x.device):
        logits = model(x)
    if logits.dim() != 3 or logits.shape[:2] != x.shape or logits.size(-1) < vocab_size:
        raise ValueError(f"model returned logits of shape {tuple(logits.shape)} for input "
                         f"{tuple(x.shape)}; expected (B, T, >= {vocab_size})")
    logp = F.log_softmax(logits.float(), dim=-1)
    if not torch.isfinite(logp).all():
        raise ValueError("model returned non-finite logits")
    return logp


def _probe(model: Model, x: torch.Tensor, y: torch.Tensor, logp: torch.Tensor,
           rows: np.ndarray, rng: np.random.Generator, vocab: int) -> tuple[float, float]:
    """Change each row after a random cut, shuffle rows, compare log-probs up to the cut."""
    B, T = x.shape
    cut = torch.from_numpy(rng.integers(0, T - 1, size=B)).to(x.device)
    donors = torch.from_numpy(rows[rng.integers(0, len(rows), size=B), :-1]).to(x.device)
    pos = torch.arange(T, device=x.device)
    after = pos[None, :] > cut[:, None]
    probed = torch.where(after, donors, x)
    perm = torch.from_numpy(rng.permutation(B)).to(x.device)
    logp2 = torch.empty_like(logp)
    logp2[perm] = _log_probs(model, probed[perm], vocab)
    keep = ~after
    diff = float(((logp - logp2).abs().amax(-1) * keep).max())
    at_cut = torch.arange(B, device=x.device), cut
    target = y[at_cut]
    gain = float((logp[at_cut][torch.arange(B), target] - logp2[at_cut][torch.arange(B), target])
                 .sum())
    return diff, gain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path(MODEL_FILE))
    parser.add_argument("--data", type=Path, default=None, help="validation split folder")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args(argv)
    device = harness.pick_device() if args.device == "auto" else torch.device(args.device)
    raw = args.model.read_bytes()
    model = load_archive(raw, device)
    split = load_split(args.data or data_dir() / "val")
    batch, seq = model.input_shape
    if seq != split.seq_len:
        raise ValueError(f"model was exported for sequence length {seq}; the evaluation "
                         f"context is fixed at {split.seq_len} tokens")
    seed = int.from_bytes(hashlib.sha256(raw).digest()[:8], "little")
    result = evaluate_bpb(model, split, batch, device, seed=seed)
    metrics = {**asdict(result), "eval_num_params": model.num_params,
               "eval_device": harness.device_name(device), "data_hash": split.meta.get("hash")}
    harness.write_metrics(metrics)
    print(f"val_bpb:          {result.val_bpb:.6f}")
    print(f"eval_seconds:     {result.eval_seconds:.2f}")
    print(f"eval_tokens:      {result.target_tokens}")
    print(json.dumps(metrics, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
