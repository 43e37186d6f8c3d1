"""val_bpb is exactly the REFERENCE definition, and the evaluator runs models as data."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer import flops
from trainer.archive import ArchiveError, export_model, load_archive
from trainer.evaluate import CausalityViolation, evaluate_bpb
from trainer.shards import load_split, write_split
from trainer.summary import format_summary

VOCAB = 6
# id -> UTF-8 bytes it decodes to; id 5 is a special token (0 bytes, never scored).
TOKEN_BYTES = np.array([1, 2, 3, 1, 4, 0], dtype=np.int32)


class TinyLM(nn.Module):
    """A causal toy model: logits from the current token plus a causal running mean."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(VOCAB, 8)
        self.head = nn.Linear(8, VOCAB)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.emb(idx)
        steps = torch.arange(1, idx.size(1) + 1, device=idx.device).view(1, -1, 1)
        out: torch.Tensor = self.head(h + h.cumsum(1) / steps)
        return out


class PeekingLM(TinyLM):
    """Cheats: sees the next input token (the current target) through a shift."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        nxt = torch.cat([idx[:, 1:], idx[:, -1:]], dim=1)
        return super().forward(idx) + 20.0 * F.one_hot(nxt, VOCAB).float()


@pytest.fixture()
def split(tmp_path: Path):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, VOCAB, size=400).astype(np.uint16)
    tokens[::37] = 5  # sprinkle special tokens
    write_split(tmp_path / "val", tokens, TOKEN_BYTES,
                {"vocab_size": VOCAB, "seq_len": 16, "eval_batch_size": 4, "eval_tokens": 400})
    return load_split(tmp_path / "val")


@torch.no_grad()
def brute_force_bpb(model: nn.Module, tokens: np.ndarray, seq_len: int) -> float:
    """One row at a time, float64, straight from the definition."""
    nats, nbytes = 0.0, 0
    for r in range(len(tokens) // (seq_len + 1)):
        row = torch.tensor(tokens[r * (seq_len + 1):(r + 1) * (seq_len + 1)].astype(np.int64))
        logits = model(row[None, :-1])[0].double()
        for t in range(seq_len):
            target = int(row[t + 1])
            if TOKEN_BYTES[target] == 0:
                continue
            nats -= float(torch.log_softmax(logits[t], -1)[target])
            nbytes += int(TOKEN_BYTES[target])
    return nats / (math.log(2) * nbytes)


def test_val_bpb_matches_brute_force_with_bytes_and_special_tokens(split) -> None:  # type: ignore[no-untyped-def]
    model = TinyLM()
    result = evaluate_bpb(model, split, batch_size=4, device=torch.device("cpu"))
    expected = brute_force_bpb(model, np.asarray(split.tokens), split.seq_len)
    assert result.val_bpb == pytest.approx(expected, rel=1e-6)
    rows = np.asarray(split.tokens[: result.rows * 17]).reshape(result.rows, 17)[:, 1:]
    assert result.target_bytes == int(TOKEN_BYTES[rows].sum())
    assert result.target_tokens == int((TOKEN_BYTES[rows] > 0).sum())


def test_val_bpb_is_the_same_through_the_model_archive(split) -> None:  # type: ignore[no-untyped-def]
    model = TinyLM()
    archived = load_archive(export_model(model, torch.zeros(4, 16, dtype=torch.long)))
    direct = evaluate_bpb(model, split, 4, torch.device("cpu"), seed=3).val_bpb
    via_archive = evaluate_bpb(archived, split, 4, torch.device("cpu"), seed=3).val_bpb
    assert via_archive == pytest.approx(direct, rel=1e-6)
    assert archived.num_params == sum(p.numel() for p in model.parameters())


def test_archived_model_is_a_fresh_instance_per_call(split) -> None:  # type: ignore[no-untyped-def]
    archived = load_archive(export_model(TinyLM(), torch.zeros(4, 16, dtype=torch.long)))
    before = {k: v.clone() for k, v in archived.weights.items()}
    x = torch.randint(0, VOCAB, (4, 16))
    first = archived(x)
    expected = first.clone()
    first.add_(1.0)  # whatever the caller does to one call's output...
    evaluate_bpb(archived, split, 4, torch.device("cpu"), seed=5)
    assert torch.equal(archived(x), expected)  # ...no later call sees it
    assert all(torch.equal(before[k], v) for k, v in archived.weights.items())


class ManyLayers(nn.Module):
    """Layers a candidate edit is likely to use; all must pass the evaluator's allowlist."""

    mask: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.ln = nn.Embedding(VOCAB, 16), nn.LayerNorm(16)
        self.fc, self.proj = nn.Linear(16, 64), nn.Linear(64, 16)
        self.bn, self.conv = nn.BatchNorm1d(16), nn.Conv1d(16, 16, 3, padding=2)
        self.drop, self.head = nn.Dropout(0.1), nn.Linear(16, VOCAB, bias=False)
        self.register_buffer("mask", torch.tril(torch.ones(16, 16)).bool())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        h = self.emb(idx)
        q = self.ln(h)
        att = (q @ q.transpose(-2, -1) / 4.0).masked_fill(~self.mask[:T, :T], float("-inf"))
        h = h + self.drop(att.softmax(-1) @ q)
        heads = F.rms_norm(h, (16,)).view(B, T, 2, 8).transpose(1, 2)
        h = h + F.scaled_dot_product_attention(heads, heads, heads, is_causal=True) \
            .transpose(1, 2).reshape(B, T, 16)
        h = h + self.proj(F.gelu(self.fc(h), approximate="tanh")) + self.proj(F.silu(self.fc(h)))
        h = self.bn(h.transpose(1, 2)).transpose(1, 2)
        h = h + self.conv(h.transpose(1, 2))[..., :T].transpose(1, 2)
        h = h.clone()
        h.mul_(0.5)  # in-place ops are turned into pure ones at export
        h = torch.einsum("btc,btc->bt", h, h).unsqueeze(-1).tanh() * h
        out: torch.Tensor = self.head(h)
        return out


def test_common_layers_export_and_run_under_the_allowlist() -> None:
    model = ManyLayers().eval()
    x = torch.randint(0, VOCAB, (4, 16))
    archived = load_archive(export_model(model, torch.zeros(4, 16, dtype=torch.long)))
    assert torch.allclose(archived(x), model(x), atol=1e-5)


def test_deny_model_that_peeks_at_future_tokens(split) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CausalityViolation, match="causal"):
        evaluate_bpb(PeekingLM(), split, batch_size=4, device=torch.device("cpu"))


def test_untrained_uniform_model_scores_log2_vocab_over_bytes(split) -> None:  # type: ignore[no-untyped-def]
    class Uniform(nn.Module):
        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return torch.zeros(*idx.shape, VOCAB)

    result = evaluate_bpb(Uniform(), split, 4, torch.device("cpu"))
    assert result.val_bpb == pytest.approx(result.target_tokens * math.log2(VOCAB)
                                           / result.target_bytes)


def _archive_with(nodes: list[dict[str, object]],
                  tensors: dict[str, object] | None = None) -> bytes:
    head = json.dumps({"format": "bilevel-graph/1", "input_shape": [1, 4], "nodes": nodes,
                       "tensors": tensors or {}}).encode()
    return struct.pack("<Q", len(head)) + head


@pytest.mark.parametrize("target", ["aten::from_file.default", "torch.os.system",
                                    "aten::add_.Tensor", "aten::mul.out", "builtins.eval"])
def test_deny_archive_calling_non_compute_operators(target: str) -> None:
    data = _archive_with([{"op": "input", "name": "x"},
                          {"op": "call", "name": "y", "target": target,
                           "args": {"list": [{"node": "x"}]}, "kwargs": {}},
                          {"op": "output", "args": {"list": [{"node": "y"}]}}])
    with pytest.raises(ArchiveError):
        load_archive(data)


@pytest.mark.parametrize("args", [{"list": 3}, {"node": "missing"}, {"float": "1e9"},
                                  {"dtype": "object"}, {"eval": "x"}, [1, 2]])
def test_deny_malformed_archive_arguments(args: object) -> None:
    data = _archive_with([{"op": "input", "name": "x"},
                          {"op": "call", "name": "y", "target": "aten::add.Tensor",
                           "args": {"list": [{"node": "x"}, args]}, "kwargs": {}},
                          {"op": "output", "args": {"list": [{"node": "y"}]}}])
    with pytest.raises(ArchiveError):
        load_archive(data)


def test_deny_archive_with_out_of_bounds_tensor() -> None:
    data = _archive_with([{"op": "weight", "name": "w"}],
                         {"w": {"dtype": "float32", "shape": [1000], "offset": 0,
                                "nbytes": 4000}})
    with pytest.raises(ArchiveError, match="invalid entry"):
        load_archive(data)


def test_deny_archive_that_is_a_pickle() -> None:
    with pytest.raises(ArchiveError):
        load_archive(b"\x80\x04\x95" + b"\x00" * 64)


def test_mfu_uses_the_cards_own_peak() -> None:
    assert flops.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert flops.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert flops.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert flops.peak_flops("NVIDIA GeForce RTX 4090") == pytest.approx(165.2e12)
    assert flops.peak_flops("NVIDIA L4") == 121e12
    assert flops.peak_flops("cpu") is None
    assert flops.mfu_percent(6e9, 1000, 1.0, "cpu") is None
    assert flops.mfu_percent(989e9, 1000, 1.0, "NVIDIA H100") == pytest.approx(100.0)


def test_summary_block_is_greppable() -> None:
    text = format_summary({"val_bpb": 1.23456789, "training_seconds": 300.1, "depth": 8,
                           "mfu_percent": None})
    assert "val_bpb:          1.234568" in text.splitlines()
    assert "mfu_percent:      n/a" in text.splitlines()
    assert "depth:            8" in text.splitlines()
