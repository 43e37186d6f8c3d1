"""The model-archive loader with its purity protections taken out, for the sensitivity
twins in tests/test_deny_archive.py: operators resolved by a deny-list of names (the
named few, any name ending in "_", any `out` overload) instead of trainer.archive_ops'
allow-list and schema check, weights shared and mutable across calls, and no bounds
check of what an op returns. It lives here so that the product holds only the loader
that protects; a test weakens it by patching these three points."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import pytest
import torch

from trainer import archive, archive_ops

DENY_OPS = frozenset({"from_file", "_print", "set_", "set", "_pin_memory", "pin_memory",
                      "_local_scalar_dense", "copy_", "resize_", "_assert_async"})


def resolve_by_denylist(target: str) -> Callable[..., Any]:
    if target == "getitem":
        return operator.getitem
    match = archive._OP_NAME.match(target)
    if not match:
        raise archive.ArchiveError(f"operator {target!r} is not an allowed ATen operator")
    name, overload = match.groups()
    if name in DENY_OPS or name.endswith("_") or overload == "out":
        raise archive.ArchiveError(f"operator {target!r} is not allowed in an evaluated model")
    packet = getattr(torch.ops.aten, name, None)
    op = getattr(packet, overload, None) if packet is not None else None
    if not isinstance(op, torch._ops.OpOverload):
        raise archive.ArchiveError(f"operator {target!r} does not exist in this torch")
    return op


def _unchecked_outputs(value: Any, where: str) -> None:
    return None


def _shared_weight(self: archive.ArchivedModel, name: str) -> torch.Tensor:
    return self.weights[name]


def weaken(monkeypatch: pytest.MonkeyPatch | None = None) -> None:
    """Take the protections out: through `monkeypatch` (undone after the test), or for
    the rest of this process (a child process that runs a hostile archive)."""
    patches: list[tuple[object, str, object]] = [
        (archive, "_resolve", resolve_by_denylist),
        (archive_ops, "check_outputs", _unchecked_outputs),
        (archive.ArchivedModel, "_weight", _shared_weight)]
    for target, name, value in patches:
        if monkeypatch is not None:
            monkeypatch.setattr(target, name, value)
        else:
            setattr(target, name, value)
