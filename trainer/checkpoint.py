"""Load a torch state dict that phase 1 (the untrusted candidate) wrote, for a task's
trusted scorer.

Phase 1's files are hostile input. A plain `torch.load` unpickles them, and a pickle
runs whatever its `__reduce__` names: the candidate's code would run inside the scorer
and could print its own metric. This reads only what `torch.load(weights_only=True)`
accepts (tensors and plain containers, no code), within a size cap, and hands back the
tensors only if they are exactly what the task's own model (built by the scorer, from
the task's own class) expects: the same keys, shapes and dtypes, finite values. Installed
in the sandbox image, so any scorer can `from trainer.checkpoint import load_state_dict`:

    model = GPT(GPTConfig(...))    # the task's class, built by the trusted scorer
    model.load_state_dict(load_state_dict("out/ckpt.pt", model, key="model"))
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from typing import IO, Any

import torch

MAX_BYTES = 128 << 20  # a task's phase-1 outputs are capped at 128 MB (output_mb)
MAX_SHOWN = 5


class CheckpointError(ValueError):
    """The checkpoint is refused; the message names the file and what is wrong."""


def _check_size(path: str, handle: IO[bytes], max_bytes: int) -> None:
    """A regular file of at most max_bytes; a zip (torch's format) that unpacks to at
    most max_bytes, so a small file cannot expand to fill the scorer's memory."""
    st = os.fstat(handle.fileno())
    if st.st_size > max_bytes:
        raise CheckpointError(f"{path}: {st.st_size} bytes, over the cap of {max_bytes}")
    if zipfile.is_zipfile(handle):
        try:
            with zipfile.ZipFile(handle) as archive:
                unpacked = sum(info.file_size for info in archive.infolist())
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: a damaged zip: {exc}") from None
        if unpacked > max_bytes:
            raise CheckpointError(f"{path}: unpacks to {unpacked} bytes, over the cap of "
                                  f"{max_bytes}")
    handle.seek(0)


def _unpickle(path: str, handle: IO[bytes]) -> Any:
    """torch.load with weights_only=True: tensors, numbers, strings and containers, never
    an arbitrary class or callable (no code of the candidate's runs)."""
    try:
        return torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError, EOFError, ...
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise CheckpointError(f"{path}: not a plain torch checkpoint, refused by "
                              f"torch.load(weights_only=True): {type(exc).__name__}: "
                              f"{first}") from None


def _select(path: str, loaded: Any, key: str | None) -> Any:
    """The state dict itself, or the entry `key` of a checkpoint dict (nanoGPT's "model")."""
    if key is None:
        return loaded
    if not isinstance(loaded, dict) or key not in loaded:
        raise CheckpointError(f"{path}: no entry {key!r} (the state dict) in the checkpoint")
    return loaded[key]


def _check_entries(path: str, state: Any) -> dict[str, torch.Tensor]:
    """A dict of names to plain dense tensors with data (on the CPU), nothing else."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict")
    bad = [repr(k)[:80] for k, v in state.items() if not isinstance(k, str)
           or type(v) not in (torch.Tensor, torch.nn.Parameter)
           or v.layout != torch.strided or v.is_quantized or v.device.type != "cpu"]
    if bad:
        raise CheckpointError(f"{path}: entries that are not plain tensors: "
                              f"{', '.join(bad[:MAX_SHOWN])}")
    return dict(state)


def _check_keys(path: str, state: Mapping[str, torch.Tensor],
                expected: Mapping[str, torch.Tensor]) -> None:
    """Exactly the reference model's keys: none missing, none extra."""
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{path}: keys differ from the model's: missing "
                              f"{missing[:MAX_SHOWN]}, unexpected {extra[:MAX_SHOWN]}")


def _check_tensors(path: str, state: Mapping[str, torch.Tensor],
                   expected: Mapping[str, torch.Tensor]) -> None:
    """Each tensor of the reference model's shape and dtype."""
    for name, want in expected.items():
        got = state[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise CheckpointError(f"{path}: {name} is {got.dtype} {tuple(got.shape)}, the "
                                  f"model's is {want.dtype} {tuple(want.shape)}")


def _check_finite(path: str, state: Mapping[str, torch.Tensor]) -> None:
    """No NaN or infinity in a floating or complex tensor."""
    for name, tensor in state.items():
        if (tensor.is_floating_point() or tensor.is_complex()) \
                and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: {name} holds non-finite values (NaN or inf)")


def load_state_dict(path: str | os.PathLike[str], reference: torch.nn.Module, *,
                    key: str | None = None, max_bytes: int = MAX_BYTES
                    ) -> dict[str, torch.Tensor]:
    """The checked state dict in `path` for `reference` (the task's own model, built by
    the scorer); `key` picks the state dict out of a checkpoint dict. Raises
    CheckpointError naming the file and the first problem."""
    name = os.fspath(path)
    expected = reference.state_dict()
    try:
        handle = open(name, "rb")  # noqa: SIM115 - closed below, after every check
    except OSError as exc:
        raise CheckpointError(f"{name}: cannot be read: {exc.strerror}") from None
    with handle:
        _check_size(name, handle, max_bytes)
        loaded = _unpickle(name, handle)
    state = _check_entries(name, _select(name, loaded, key))
    _check_keys(name, state, expected)
    _check_tensors(name, state, expected)
    _check_finite(name, state)
    return state
