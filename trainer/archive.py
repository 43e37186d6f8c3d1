"""Hand a trained model from the untrusted trainer to the trusted evaluator as data.

Phase 1 (candidate process) traces the model with `torch.export` and writes a
``model.bilevel`` archive: a JSON graph of ATen operator calls plus raw tensor bytes.
Phase 2 (trusted evaluator) reads it back WITHOUT `torch.export.load`, because that
path unpickles with ``weights_only=False``, resolves arbitrary ``torch.*`` attributes
as call targets and feeds shape expressions to ``sympy.sympify`` (an ``eval``): any of
them would run candidate code next to the validation data. Here loading is JSON parsing
plus ``torch.frombuffer``; running is a loop calling only allowlisted ``aten`` ops.

The model must also be a pure function of its input (a stateful model that remembers
the scored batch could replay its logits on the causality probe). So only pure ops run
(trainer.archive_ops: allowlist + torch's schema + tensor bounds), and every call gets
fresh copies of the weights in a fresh environment, with the RNG reseeded: nothing
one call computes can reach the next.

Archive layout: 8-byte little-endian header length, UTF-8 JSON header, tensor bytes.
"""

from __future__ import annotations

import json
import operator
import re
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer import archive_ops
from trainer.archive_ops import OpRefused

FORMAT = "bilevel-graph/1"
MAX_HEADER_BYTES = 64 << 20
MAX_NODES = 200_000
MAX_TENSORS = 100_000
MAX_TENSOR_BYTES = 4 << 30  # all weights together
MAX_ARG_DEPTH = 8
_OP_NAME = re.compile(r"^aten::([a-z_][a-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)$")
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float64": torch.float64, "int64": torch.int64, "int32": torch.int32,
    "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
}
_LAYOUTS = {"strided": torch.strided}
_MEMORY_FORMATS = {"contiguous_format": torch.contiguous_format,
                   "preserve_format": torch.preserve_format}


class ArchiveError(ValueError):
    """The archive is malformed or uses something the evaluator refuses to run."""


# ----------------------------------------------------------------------------- writing


def _dtype_name(dtype: torch.dtype) -> str:
    for name, value in _DTYPES.items():
        if value == dtype:
            return name
    raise ArchiveError(f"tensor dtype {dtype} is not supported in the model archive")


def _encode(value: Any) -> Any:
    if isinstance(value, torch.fx.Node):
        return {"node": value.name}
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else {"float": str(value)}
    if isinstance(value, list | tuple):
        return {"list": [_encode(v) for v in value]}
    if isinstance(value, torch.dtype):
        return {"dtype": _dtype_name(value)}
    if isinstance(value, torch.device):
        return {"device": value.type}
    if isinstance(value, torch.layout):
        return {"layout": "strided"}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    raise ArchiveError(f"cannot archive graph argument {value!r} ({type(value).__name__})")


def _op_name(target: Any) -> str:
    if target is operator.getitem:
        return "getitem"
    if isinstance(target, torch._ops.OpOverload):
        schema = target._schema
        return f"{schema.name}.{schema.overload_name or 'default'}"
    raise ArchiveError(f"graph calls {target!r}, which is not an ATen operator")


# Ops torch.export emits that the evaluator refuses, and their pure equivalents; `view`
# becomes `reshape` too, since kernels may return other strides than export's tracing saw
# (a view after eval-mode batch norm then fails at run time; reshape copies instead).
_REWRITES: dict[Any, Any] = {torch.ops.aten._unsafe_view.default: torch.ops.aten.reshape.default,
                             torch.ops.aten.view.default: torch.ops.aten.reshape.default}


def _refusal(target: Any) -> str:
    if target is operator.getitem:
        return ""
    if not isinstance(target, torch._ops.OpOverload):
        return "it is not an ATen operator"
    target = _REWRITES.get(target, target)
    schema = target._schema
    if not schema.name.startswith("aten::"):
        return "it is not an ATen operator"
    return archive_ops.refusal(schema.name.removeprefix("aten::"),
                               schema.overload_name or "default")


def export_model(model: torch.nn.Module, example: torch.Tensor) -> bytes:
    """Trace `model(example)` with torch.export and serialise it as archive bytes."""
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.export.export(model, (example,), strict=False)
    finally:
        model.train(was_training)
    calls = [n for n in program.graph.nodes if n.op == "call_function"]
    if any(_refusal(n.target) for n in calls):
        program = program.run_decompositions()  # turns in-place ops into pure ones
    for node in program.graph.nodes:
        if node.op == "call_function":
            node.target = _REWRITES.get(node.target, node.target)
            why = _refusal(node.target)
            if why:  # fail here, in phase 1, with a message the candidate can act on
                raise ArchiveError(f"graph node {node.name} calls {node.target}, which the "
                                   f"evaluator refuses: {why}")
    signature = program.graph_signature
    lifted = {**signature.inputs_to_parameters, **signature.inputs_to_buffers,
              **signature.inputs_to_lifted_tensor_constants}
    tensors = {**program.state_dict, **program.constants}
    nodes: list[dict[str, Any]] = []
    index: dict[str, dict[str, Any]] = {}
    chunks: list[bytes] = []
    offset = 0
    for node in program.graph.nodes:
        if node.op == "placeholder":
            if node.name in lifted:
                tensor = tensors[lifted[node.name]].detach().cpu().contiguous()
                flat = tensor.reshape(-1).view(torch.uint8)  # reshape: 0-dim tensors too
                raw = flat.numpy().tobytes() if tensor.numel() else b""
                index[node.name] = {"dtype": _dtype_name(tensor.dtype),
                                    "shape": list(tensor.shape), "offset": offset,
                                    "nbytes": len(raw),
                                    "param": node.name in signature.inputs_to_parameters}
                chunks.append(raw)
                offset += len(raw)
                nodes.append({"op": "weight", "name": node.name})
            else:
                nodes.append({"op": "input", "name": node.name})
        elif node.op == "call_function":
            nodes.append({"op": "call", "name": node.name, "target": _op_name(node.target),
                          "args": _encode(list(node.args)),
                          "kwargs": {k: _encode(v) for k, v in node.kwargs.items()}})
        elif node.op == "output":
            nodes.append({"op": "output", "args": _encode(list(node.args))})
        else:
            raise ArchiveError(f"graph node {node.name} has unsupported kind {node.op}")
    inputs = [n for n in nodes if n["op"] == "input"]
    if len(inputs) != 1:
        raise ArchiveError(f"the model must take exactly one tensor input, got {len(inputs)}")
    header = {"format": FORMAT, "input_shape": list(example.shape), "nodes": nodes,
              "tensors": index}
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


# ----------------------------------------------------------------------------- reading


def _resolve(target: str) -> Callable[..., Any]:
    if target == "getitem":
        return operator.getitem
    match = _OP_NAME.match(target)
    if not match:
        raise ArchiveError(f"operator {target!r} is not an allowed ATen operator")
    name, overload = match.groups()
    try:
        return archive_ops.resolve(name, overload)
    except OpRefused as exc:
        raise ArchiveError(str(exc)) from None


@dataclass
class ArchivedModel:
    """A validated graph plus weights, callable like the model: logits = model(idx).

    Each call is a fresh instance: the graph sees clones of the weights (never
    `weights` itself) in an environment of its own, with the RNG reseeded, and every
    tensor an op returns is bounds-checked against its storage."""

    nodes: list[dict[str, Any]]
    weights: dict[str, torch.Tensor]
    input_shape: tuple[int, ...]
    device: torch.device
    num_params: int

    def to(self, device: torch.device) -> ArchivedModel:
        self.weights = {k: v.to(device) for k, v in self.weights.items()}
        self.device = device
        return self

    def _decode(self, value: Any, env: dict[str, Any]) -> Any:
        if isinstance(value, dict):
            ((kind, inner),) = value.items()
            if kind == "node":
                return env[inner]
            if kind == "list":
                return [self._decode(v, env) for v in inner]
            if kind == "float":
                return float(inner)
            if kind == "dtype":
                return _DTYPES[inner]
            if kind == "device":
                return self.device  # the evaluator decides where the model runs
            if kind == "layout":
                return _LAYOUTS[inner]
            if kind == "memory_format":
                return _MEMORY_FORMATS[inner]
        return value

    def _weight(self, name: str) -> torch.Tensor:
        """A call's own copy of a weight: what one call writes, the next never sees."""
        return self.weights[name].clone()

    @torch.no_grad()
    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(0)  # no random stream that counts the calls
        idx = idx.clone()
        env: dict[str, Any] = {}
        for node in self.nodes:
            op = node["op"]
            if op == "input":
                env[node["name"]] = idx
            elif op == "weight":
                env[node["name"]] = self._weight(node["name"])
            elif op == "call":
                fn = node["fn"]
                args = self._decode(node["args"], env)
                kwargs = {k: self._decode(v, env) for k, v in node["kwargs"].items()}
                if fn is operator.getitem and not (
                        len(args) == 2 and isinstance(args[0], list | tuple)
                        and type(args[1]) is int):
                    raise ArchiveError(f"node {node['name']}: getitem takes an op's tuple "
                                       "output and an int")
                try:
                    result = fn(*args, **kwargs)
                    archive_ops.check_outputs(result, f"node {node['name']}")
                except OpRefused as exc:
                    raise ArchiveError(str(exc)) from None
                env[node["name"]] = result
            else:
                outputs = self._decode(node["args"], env)[0]
                out = outputs[0] if isinstance(outputs, list | tuple) else outputs
                if not isinstance(out, torch.Tensor):
                    raise ArchiveError("the model's first output is not a tensor")
                return out
        raise ArchiveError("graph has no output node")


def _check_value(value: Any, known: set[str], depth: int = 0) -> None:
    if depth > MAX_ARG_DEPTH:
        raise ArchiveError(f"graph argument nested deeper than {MAX_ARG_DEPTH} levels")
    if isinstance(value, dict):
        if len(value) != 1:
            raise ArchiveError(f"malformed graph argument {value!r}")
        ((kind, inner),) = value.items()
        if kind == "node" and inner not in known:
            raise ArchiveError(f"graph argument refers to unknown node {inner!r}")
        if kind == "list":
            if not isinstance(inner, list):
                raise ArchiveError(f"malformed graph list {inner!r}")
            for v in inner:
                _check_value(v, known, depth + 1)
        table: dict[str, dict[str, Any]] = {
            "dtype": _DTYPES, "layout": _LAYOUTS, "memory_format": _MEMORY_FORMATS}
        if kind in table and inner not in table[kind]:
            raise ArchiveError(f"unsupported {kind} {inner!r}")
        if kind not in ("node", "list", "float", "device", *table):
            raise ArchiveError(f"unknown graph argument kind {kind!r}")
        if kind == "float" and inner not in ("inf", "-inf", "nan"):
            raise ArchiveError(f"malformed float {inner!r}")
    elif not (value is None or isinstance(value, bool | int | float | str)):
        raise ArchiveError(f"malformed graph argument {value!r}")


def load_archive(data: bytes, device: torch.device | str = "cpu") -> ArchivedModel:
    """Parse and validate archive bytes; never unpickles and never evaluates strings."""
    try:
        return _load(data, device)
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError,
            OverflowError) as exc:
        if isinstance(exc, ArchiveError):
            raise
        raise ArchiveError(f"malformed model archive: {type(exc).__name__}: {exc}") from exc


def _load(data: bytes, device: torch.device | str) -> ArchivedModel:
    if len(data) < 8:
        raise ArchiveError("model archive is truncated")
    (size,) = struct.unpack("<Q", data[:8])
    if size > MAX_HEADER_BYTES or 8 + size > len(data):
        raise ArchiveError(f"model archive header of {size} bytes is invalid")
    try:
        header = json.loads(data[8:8 + size])
    except ValueError as exc:
        raise ArchiveError(f"model archive header is not JSON: {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ArchiveError(f"not a {FORMAT} archive")
    blob = memoryview(data)[8 + size:]
    weights: dict[str, torch.Tensor] = {}
    if len(header["tensors"]) > MAX_TENSORS or len(header["nodes"]) > MAX_NODES:
        raise ArchiveError(f"model archive has more than {MAX_TENSORS} tensors or "
                           f"{MAX_NODES} graph nodes")
    total = 0
    for name, spec in header["tensors"].items():
        dtype = _DTYPES.get(spec["dtype"])
        shape = [int(s) for s in spec["shape"]]
        start, nbytes = int(spec["offset"]), int(spec["nbytes"])
        count = 1
        for s in shape:
            count *= s
        total += nbytes
        if (dtype is None or start < 0 or nbytes < 0 or start + nbytes > len(blob)
                or min(shape, default=1) < 0 or len(shape) > archive_ops.MAX_DIMS
                or count > archive_ops.MAX_ELEMENTS):
            raise ArchiveError(f"tensor {name!r} has an invalid entry {spec!r}")
        if total > MAX_TENSOR_BYTES:
            raise ArchiveError(f"model weights exceed {MAX_TENSOR_BYTES} bytes")
        if count * torch.empty((), dtype=dtype).element_size() != nbytes:
            raise ArchiveError(f"tensor {name!r}: {nbytes} bytes do not match shape {shape}")
        raw = bytearray(blob[start:start + nbytes])
        flat = torch.frombuffer(raw, dtype=dtype) if nbytes else torch.empty(0, dtype=dtype)
        weights[name] = flat.reshape(shape)
        try:
            archive_ops.check_tensor(weights[name], f"tensor {name!r}")
        except OpRefused as exc:
            raise ArchiveError(str(exc)) from None
    known: set[str] = set()
    nodes: list[dict[str, Any]] = []
    for node in header["nodes"]:
        op = node.get("op")
        if op in ("input", "weight", "call"):
            name = node["name"]
            if not isinstance(name, str) or name in known:
                raise ArchiveError(f"duplicate or invalid node name {name!r}")
            if op == "weight" and name not in weights:
                raise ArchiveError(f"weight node {name!r} has no tensor")
            if op == "call":
                _check_value({"list": node["args"]["list"]}, known)
                for v in node["kwargs"].values():
                    _check_value(v, known)
                node = {**node, "fn": _resolve(node["target"])}
            known.add(name)
        elif op == "output":
            _check_value(node["args"], known)
        else:
            raise ArchiveError(f"unknown graph node kind {op!r}")
        nodes.append(node)
    num_params = sum(weights[n].numel() for n, s in header["tensors"].items() if s.get("param"))
    input_shape = tuple(int(s) for s in header["input_shape"])
    if len(input_shape) != 2:
        raise ArchiveError(f"model input must be (batch, time), got {input_shape}")
    return ArchivedModel(nodes, weights, input_shape, torch.device("cpu"), num_params).to(
        torch.device(device))


def save_archive(path: Path, model: torch.nn.Module, example: torch.Tensor) -> int:
    """Export and write `model` to `path`; returns the archive size in bytes."""
    data = export_model(model, example)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return len(data)
