"""The on-disk format of one prepared split, and its reader.

Shared by the host (which writes it) and the sandbox (which reads it), so it needs
only numpy. A split is a folder holding:

- ``tokens.npy``: every token of the split, uint16 (or uint32 for vocabularies over 65535);
- ``token_bytes.npy``: int32, the UTF-8 byte length each vocabulary id decodes to
  (0 for special tokens, which the metric excludes);
- ``meta.json``: vocabulary size, token count, tokenizer, sequence length, hash.

Train and validation live in sibling folders so each can be mounted on its own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

TOKENS_FILE = "tokens.npy"
TOKEN_BYTES_FILE = "token_bytes.npy"
META_FILE = "meta.json"
DATA_DIR_ENV = "BILEVEL_DATA_DIR"
DEFAULT_DATA_DIR = "/data"


class DataError(RuntimeError):
    """A prepared split is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class Split:
    """One loaded split: tokens (memory-mapped), the byte table and its metadata."""

    path: Path
    tokens: npt.NDArray[np.unsignedinteger[Any]]
    token_bytes: npt.NDArray[np.int32]
    meta: dict[str, Any]

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def seq_len(self) -> int:
        """The fixed evaluation context: the model must accept inputs this long."""
        return int(self.meta["seq_len"])

    @property
    def eval_batch_size(self) -> int:
        return int(self.meta.get("eval_batch_size", 8))

    def batches(
        self, batch_size: int, seq_len: int, seed: int
    ) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
        """Endless random windows (inputs, next-token targets), reproducible from `seed`."""
        n = len(self.tokens)
        if n < seq_len + 2:
            raise DataError(f"{self.path}: {n} tokens, fewer than one sequence of {seq_len}")
        rng = np.random.default_rng(seed)
        span = np.arange(seq_len + 1)
        while True:
            starts = rng.integers(0, n - seq_len - 1, size=batch_size)
            window = self.tokens[starts[:, None] + span].astype(np.int64)
            yield np.ascontiguousarray(window[:, :-1]), np.ascontiguousarray(window[:, 1:])


def load_split(path: str | os.PathLike[str]) -> Split:
    """Open a split folder written by `write_split`; tokens stay memory-mapped."""
    root = Path(path)
    try:
        meta = json.loads((root / META_FILE).read_text(encoding="utf-8"))
        tokens = np.load(root / TOKENS_FILE, mmap_mode="r", allow_pickle=False)
        token_bytes = np.load(root / TOKEN_BYTES_FILE, allow_pickle=False)
    except FileNotFoundError as exc:
        raise DataError(
            f"prepared data not found: {exc.filename} (run `bilevel train` or "
            f"trainer.data.prepare to create it, or set {DATA_DIR_ENV})"
        ) from exc
    if tokens.dtype not in (np.uint16, np.uint32) or tokens.ndim != 1:
        raise DataError(f"{root / TOKENS_FILE}: expected 1-D uint16/uint32, got {tokens.dtype}")
    if token_bytes.shape != (int(meta["vocab_size"]),):
        raise DataError(f"{root / TOKEN_BYTES_FILE}: shape {token_bytes.shape} != vocab size")
    return Split(root, tokens, token_bytes.astype(np.int32), meta)


def write_split(
    path: Path,
    tokens: npt.NDArray[np.integer[Any]],
    token_bytes: npt.NDArray[np.integer[Any]],
    meta: dict[str, Any],
) -> None:
    """Write one split folder; tokens use the narrowest dtype that holds the vocabulary."""
    path.mkdir(parents=True, exist_ok=True)
    vocab = int(meta["vocab_size"])
    dtype = np.uint16 if vocab <= 1 << 16 else np.uint32
    np.save(path / TOKENS_FILE, np.ascontiguousarray(tokens, dtype=dtype), allow_pickle=False)
    np.save(path / TOKEN_BYTES_FILE, np.asarray(token_bytes, dtype=np.int32), allow_pickle=False)
    full = {**meta, "num_tokens": len(tokens), "num_bytes": int(token_bytes[tokens].sum())}
    (path / META_FILE).write_text(json.dumps(full, indent=2, sort_keys=True), encoding="utf-8")


def data_dir() -> Path:
    """Where the prepared splits are mounted: $BILEVEL_DATA_DIR, else /data."""
    return Path(os.environ.get(DATA_DIR_ENV, DEFAULT_DATA_DIR))
