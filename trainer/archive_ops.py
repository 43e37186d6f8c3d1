"""Which ATen operators an archived model may call, and the tensor bounds it must keep.

The evaluator runs a candidate's graph next to the validation data, so every operator
must be a pure function of its inputs: it writes no argument (that is how a model keeps
state between the scored pass and the causality probe, and how a forged view writes
out of bounds), reads no uninitialised memory (``empty*`` hands back freed blocks, e.g.
the previous pass's logits), draws no random numbers, and builds no view from explicit
strides or offsets (``as_strided``, ``_reshape_alias``: an out-of-bounds read or write).

Three layers, each enough on its own against a stateful, out-of-bounds or mutating graph:
* ``ALLOWED_OPS``: ATen names known to be pure, deterministic and bounds-checked;
* the op's own schema (``torch._C.FunctionSchema``): any overload that writes an
  argument (``Tensor(a!)``, ``is_mutable``) or takes ``stride``/``storage_offset`` and
  returns a view is refused even if its name is allowed (``out=`` overloads included);
* ``check_tensor``: every weight at load and every tensor an op returns lies inside its
  storage (offset + extent <= storage bytes, no negative sizes or strides).
"""

from __future__ import annotations

import re
from typing import Any

import torch

# Pure, deterministic, bounds-checked ATen ops (by name; every overload is also checked
# against its schema). Kept broad enough for the transformer variants a candidate writes.
_ALLOWED_NAMES = """
    abs acos add addcdiv addcmul addmm addmv alias all amax amin any arange argmax argmin
    argsort asin atan atan2 baddbmm bitwise_and bitwise_not bitwise_or bitwise_xor bmm
    broadcast_to cat ceil celu chunk clamp clamp_max clamp_min clip clone
    constant_pad_nd contiguous conv1d conv2d convolution copy copysign cos cosh cumprod
    cumsum detach div dot einsum elu embedding eq erf erfc erfinv exp exp2 expand expand_as
    expm1 eye flatten flip floor floor_divide fmax fmin fmod frac full full_like gather ge
    gelu glu gt hardsigmoid hardswish hardtanh index index_put index_select isfinite isinf
    isnan layer_norm le leaky_relu lerp lift_fresh_copy linear linspace log log10 log1p
    log2 log_softmax logical_and logical_not logical_or logical_xor logit logsumexp lt
    masked_fill matmul max maximum mean min minimum mish mm movedim mul mv
    _native_batch_norm_legit_no_training nan_to_num narrow native_layer_norm ne neg
    new_full new_ones new_zeros one_hot ones ones_like outer pad permute pow prod
    reciprocal relu relu6 remainder repeat repeat_interleave reshape reshape_as rms_norm
    roll round rsqrt rsub scalar_tensor scaled_dot_product_attention scatter scatter_add
    select select_scatter selu sigmoid sign sgn silu sin sinh slice slice_scatter softmax
    softplus sort split split_with_sizes sqrt square squeeze stack std std_mean sub sum t
    tan tanh tile topk transpose tril triu trunc type_as unbind unflatten unsqueeze var
    var_mean view view_as where xlogy zeros zeros_like _log_softmax _softmax _to_copy to
    _assert_tensor_metadata group_norm native_group_norm linalg_vector_norm norm
    avg_pool1d avg_pool2d max_pool1d max_pool2d adaptive_avg_pool1d adaptive_avg_pool2d
"""
ALLOWED_OPS: frozenset[str] = frozenset(_ALLOWED_NAMES.split())
# Never allowed, whatever the list above says (a test keeps the two disjoint): explicit
# geometry, uninitialised memory, storages, files, randomness, in-place state updates.
_NEVER = re.compile(r"^(as_strided|_reshape_alias|set|unsafe|_unsafe|empty|new_empty|resize|"
                    r"from_file|_print|pin_memory|_pin_memory|source_Storage|rand|normal|"
                    r"bernoulli|multinomial|dropout|native_dropout|batch_norm|"
                    r"native_batch_norm|_native_batch_norm_legit$|uniform|exponential|"
                    r"geometric|cauchy|log_normal|poisson)")
_GEOMETRY_ARGS = frozenset({"stride", "strides", "storage_offset"})
MAX_DIMS = 8
MAX_ELEMENTS = 1 << 34


class OpRefused(ValueError):
    """An operator or tensor the evaluator refuses (wrapped into ArchiveError)."""


def refusal(name: str, overload: str) -> str:
    """Why ``aten::name.overload`` may not run in the evaluator, or "" if it may."""
    if _NEVER.match(name) or name not in ALLOWED_OPS:
        return "it is not on the evaluator's allowlist of pure ATen operators"
    packet = getattr(torch.ops.aten, name, None)
    op = getattr(packet, overload, None) if packet is not None else None
    if not isinstance(op, torch._ops.OpOverload):
        return "it does not exist in this torch"
    return schema_refusal(op._schema)


def schema_refusal(schema: Any) -> str:
    """Refuse any overload whose schema writes an argument or builds a view from explicit
    strides/offsets (checked on torch's own schema, not on the name)."""
    if schema.is_mutable:
        return "its schema says it mutates an argument"
    for arg in schema.arguments:
        if arg.alias_info is not None and arg.alias_info.is_write:
            return f"its schema says it writes argument {arg.name!r}"
        if arg.name == "storage_offset":
            return "it takes an explicit storage offset"
    if any(a.name in _GEOMETRY_ARGS for a in schema.arguments) and any(
            r.alias_info is not None for r in schema.returns):
        return "it builds a view from explicit strides"
    return ""


def resolve(name: str, overload: str) -> torch._ops.OpOverload:
    why = refusal(name, overload)
    if why:
        raise OpRefused(f"operator aten::{name}.{overload} is refused: {why}")
    op: torch._ops.OpOverload = getattr(getattr(torch.ops.aten, name), overload)
    return op


def check_tensor(tensor: torch.Tensor, what: str) -> None:
    """The tensor's whole extent lies inside its storage; sizes and strides are sane."""
    if tensor.layout != torch.strided:
        raise OpRefused(f"{what}: layout {tensor.layout} is not allowed")
    sizes, strides = tuple(tensor.shape), tensor.stride()
    if len(sizes) > MAX_DIMS:
        raise OpRefused(f"{what}: {len(sizes)} dimensions, more than {MAX_DIMS}")
    if any(s < 0 for s in sizes) or any(s < 0 for s in strides):
        raise OpRefused(f"{what}: negative size or stride {sizes} / {strides}")
    offset = tensor.storage_offset()
    storage = tensor.untyped_storage().nbytes()
    if offset < 0:
        raise OpRefused(f"{what}: negative storage offset {offset}")
    if tensor.numel() == 0:
        end = offset * tensor.element_size()
    else:
        last = offset + sum((n - 1) * s for n, s in zip(sizes, strides, strict=True))
        end = (last + 1) * tensor.element_size()
    if end > storage:
        raise OpRefused(f"{what}: view reaches byte {end} of a {storage}-byte storage "
                        "(out of bounds)")


def check_outputs(value: Any, what: str) -> None:
    """check_tensor on every tensor an op returned (tuples and lists included)."""
    if isinstance(value, torch.Tensor):
        check_tensor(value, what)
    elif isinstance(value, list | tuple):
        for item in value:
            check_outputs(item, what)
