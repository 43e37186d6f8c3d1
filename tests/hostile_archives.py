"""Hand-written model archives an attacker would send instead of a trained model.

They are built byte for byte in the bilevel-graph/1 format (trainer.archive), not
exported from a module, because torch.export would never produce them: the point is
what the evaluator accepts, not what an honest phase 1 writes. Before issue 11 #1 was
fixed, the old loader accepted every one of them.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

F32 = {"dtype": "float32"}
I64 = {"dtype": "int64"}


def n(name: str) -> dict[str, str]:
    return {"node": name}


def lst(*items: Any) -> dict[str, Any]:
    return {"list": list(items)}


def _enc(value: Any) -> Any:
    """Plain Python lists become the archive's {"list": [...]}."""
    if isinstance(value, list):
        return {"list": [_enc(v) for v in value]}
    return value


class Graph:
    """Collects nodes and weights, then writes archive bytes."""

    def __init__(self, batch: int, seq: int) -> None:
        self.nodes: list[dict[str, Any]] = [{"op": "input", "name": "x"}]
        self.tensors: dict[str, dict[str, Any]] = {}
        self.blob = bytearray()
        self.shape = [batch, seq]

    def weight(self, name: str, value: np.ndarray) -> str:
        raw = np.ascontiguousarray(value, dtype=np.float32).tobytes()
        self.tensors[name] = {"dtype": "float32", "shape": list(value.shape),
                              "offset": len(self.blob), "nbytes": len(raw), "param": False}
        self.blob += raw
        self.nodes.append({"op": "weight", "name": name})
        return name

    def call(self, name: str, target: str, *args: Any, **kwargs: Any) -> str:
        self.nodes.append({"op": "call", "name": name, "target": f"aten::{target}",
                           "args": _enc(list(args)),
                           "kwargs": {k: _enc(v) for k, v in kwargs.items()}})
        return name

    def build(self, out: str) -> bytes:
        nodes = [*self.nodes, {"op": "output", "args": lst(n(out))}]
        head = json.dumps({"format": "bilevel-graph/1", "input_shape": self.shape,
                           "nodes": nodes, "tensors": self.tensors}).encode()
        return struct.pack("<Q", len(head)) + head + bytes(self.blob)


def _store(g: Graph, name: str, value: str, size: int) -> None:
    """running_mean := value (momentum 1 on a batch of two copies): state that outlives
    the call, written by _native_batch_norm_legit, whose name does not end in '_'."""
    mean = g.weight(f"{name}_mean", np.zeros(size, np.float32))
    var = g.weight(f"{name}_var", np.ones(size, np.float32))
    row = g.call(f"{name}_row", "view.default", n(value), [1, size])
    pair = g.call(f"{name}_pair", "cat.default", lst(n(row), n(row)), 0)
    g.call(f"{name}_bn", "_native_batch_norm_legit.default", n(pair), None, None, n(mean),
           n(var), True, 1.0, 1e-5)


def stateful_forger(batch: int, seq: int, vocab: int) -> bytes:
    """The forger of issue 11 #1. Scored pass: logits 20 on the next input token (it
    peeks), and it stores the batch and those logits in batch-norm running stats. Probe
    pass (every second call): it finds each shuffled row's original by the longest
    common prefix and replays the stored logits, so the probe sees no difference."""
    g = Graph(batch, seq)
    # read the state first (clones), before this call overwrites it
    g.weight("phase_mean", np.zeros(1, np.float32))
    g.weight("phase_var", np.ones(1, np.float32))
    g.call("ph", "clone.default", n("phase_mean"))
    for name, size in (("sx", batch * seq), ("sl", batch * seq * vocab)):
        g.weight(f"{name}_mean", np.zeros(size, np.float32))
        g.weight(f"{name}_var", np.ones(size, np.float32))
        g.call(f"{name}_old", "clone.default", n(f"{name}_mean"))
    g.call("sx", "view.default", n("sx_old"), [batch, seq])
    g.call("sl", "view.default", n("sl_old"), [batch, seq, vocab])
    # the cheat: the next token, read from the input; uniform at the last position
    g.call("later", "slice.Tensor", n("x"), 1, 1, seq)
    g.call("first", "slice.Tensor", n("x"), 1, 0, 1)
    g.call("zero", "mul.Tensor", n("first"), 0)
    g.call("none", "add.Tensor", n("zero"), vocab)
    g.call("nxt", "cat.default", lst(n("later"), n("none")), 1)
    g.call("hot", "one_hot.default", n("nxt"), vocab + 1)
    g.call("hot_v", "slice.Tensor", n("hot"), 2, 0, vocab)
    g.call("hot_f", "_to_copy.default", n("hot_v"), dtype=F32)
    g.call("cheat", "mul.Tensor", n("hot_f"), 20.0)
    # the replay: match rows by longest common prefix (then most common tokens)
    g.call("xf", "_to_copy.default", n("x"), dtype=F32)
    g.call("xa", "unsqueeze.default", n("xf"), 1)
    g.call("sb", "unsqueeze.default", n("sx"), 0)
    g.call("same", "eq.Tensor", n("xa"), n("sb"))
    g.call("run", "cumprod.default", n("same"), 2, dtype=I64)
    g.call("lead", "sum.dim_IntList", n("run"), [2])
    g.call("tot", "sum.dim_IntList", n("same"), [2])
    g.call("lead_w", "mul.Tensor", n("lead"), seq + 1)
    g.call("score", "add.Tensor", n("lead_w"), n("tot"))
    g.call("match", "argmax.default", n("score"), 1)
    g.call("replay", "index_select.default", n("sl"), 0, n("match"))
    g.call("is_probe", "gt.Scalar", n("ph"), 0.5)
    g.call("logits", "where.self", n("is_probe"), n("replay"), n("cheat"))
    # write the state for the next call: flip the phase, keep x and the cheat logits
    g.call("flip", "rsub.Scalar", n("ph"), 1.0)
    _store_into(g, "phase", "flip", 1)
    g.call("cheat_flat", "view.default", n("cheat"), [batch * seq * vocab])
    _store_into(g, "sl", "cheat_flat", batch * seq * vocab)
    g.call("xf_flat", "view.default", n("xf"), [batch * seq])
    _store_into(g, "sx", "xf_flat", batch * seq)
    return g.build("logits")


def _store_into(g: Graph, name: str, value: str, size: int) -> None:
    row = g.call(f"{name}_row", "view.default", n(value), [1, size])
    pair = g.call(f"{name}_pair", "cat.default", lst(n(row), n(row)), 0)
    g.call(f"{name}_bn", "_native_batch_norm_legit.default", n(pair), None, None,
           n(f"{name}_mean"), n(f"{name}_var"), True, 1.0, 1e-5)


def out_of_bounds_read(batch: int, seq: int, vocab: int, reach: int = 1 << 16) -> bytes:
    """`_reshape_alias` with explicit strides over a 4-float weight: the logits are
    `reach` floats of whatever lies after it in the evaluator's heap."""
    g = Graph(batch, seq)
    g.weight("w", np.arange(4, dtype=np.float32))
    g.call("wide", "_reshape_alias.default", n("w"), [reach], [1])
    g.call("leak", "clone.default", n("wide"))
    g.call("few", "slice.Tensor", n("leak"), 0, 0, batch * seq * vocab)
    g.call("logits", "view.default", n("few"), [batch, seq, vocab])
    return g.build("logits")


def out_of_bounds_write(batch: int, seq: int, vocab: int) -> bytes:
    """A strided view 2**36 floats past a small weight, handed to batch norm as its
    running mean: the update writes there (SIGSEGV in the old evaluator)."""
    g = Graph(batch, seq)
    g.weight("w", np.zeros(4, np.float32))
    g.weight("v", np.ones(2, np.float32))
    g.call("far", "_reshape_alias.default", n("w"), [2], [1 << 36])
    g.call("xf", "_to_copy.default", n("x"), dtype=F32)
    g.call("col", "slice.Tensor", n("xf"), 1, 0, 2)
    g.call("bn", "_native_batch_norm_legit.default", n("col"), None, None, n("far"), n("v"),
           True, 1.0, 1e-5)
    g.call("logits", "zeros.default", [batch, seq, vocab], dtype=F32)
    return g.build("logits")


def batch_norm_mutating_a_weight(batch: int, seq: int, vocab: int) -> bytes:
    """Plain pure-looking logits plus one op that mutates its input under a name without
    a trailing '_' (the running stats of _native_batch_norm_legit)."""
    g = Graph(batch, seq)
    g.call("xf", "_to_copy.default", n("x"), dtype=F32)
    g.call("flat", "view.default", n("xf"), [batch * seq])
    _store(g, "memo", "flat", batch * seq)
    g.call("logits", "zeros.default", [batch, seq, vocab], dtype=F32)
    return g.build("logits")
