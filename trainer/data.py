"""Host-side data preparation: corpus -> tokenizer -> token shards, cached by input hash.

Runs outside the sandbox (it needs `tokenizers` and the network for the first fetch).
Output folder: ``<cache>/data/<hash>/{train,val}/`` (see trainer.shards for the files)
plus ``meta.json``. A second call with the same inputs returns the cached folder at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from trainer import corpus, shards

PREP_VERSION = 1
BOS = "<|bos|>"


@dataclass(frozen=True)
class DataConfig:
    """What to prepare. `tokenizer` is "byte" (vocab 257) or "bpe" (vocab `vocab_size`)."""

    source: str = "shakespeare"
    tokenizer: str = "byte"
    vocab_size: int = 8192
    val_fraction: float = 0.1
    seq_len: int = 256  # fixed evaluation context, tokens
    eval_batch_size: int = 8  # rows per evaluation forward pass (the exported shape)
    eval_tokens: int = 1 << 20  # validation tokens scored, at most

    def validate(self) -> None:
        if self.tokenizer not in ("byte", "bpe"):
            raise ValueError(f"tokenizer must be 'byte' or 'bpe', got {self.tokenizer!r}")
        if self.tokenizer == "bpe" and not 300 <= self.vocab_size <= 1 << 20:
            raise ValueError(f"vocab_size must be in [300, 2**20], got {self.vocab_size}")
        if not 0 < self.val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in (0, 0.5), got {self.val_fraction}")
        if self.seq_len < 8 or self.eval_batch_size < 1 or self.eval_tokens < self.seq_len:
            raise ValueError("need seq_len >= 8, eval_batch_size >= 1, eval_tokens >= seq_len")


@dataclass(frozen=True)
class PreparedData:
    path: Path
    meta: dict[str, Any]

    @property
    def train_dir(self) -> Path:
        return self.path / "train"

    @property
    def val_dir(self) -> Path:
        return self.path / "val"

    @property
    def digest(self) -> str:
        return str(self.meta["hash"])


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable-character table used by byte-level BPE."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    chars = list(keep)
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars), strict=True))


class Tokenizer:
    """Byte-level (ids 0-255 are bytes, 256 is BOS) or a trained byte-level BPE."""

    def __init__(self, kind: str, bpe: Any = None) -> None:
        self.kind, self._bpe = kind, bpe

    @classmethod
    def train(cls, config: DataConfig, texts: list[str]) -> Tokenizer:
        if config.tokenizer == "byte":
            return cls("byte")
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        bpe = HFTokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=config.vocab_size, special_tokens=[BOS], show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        bpe.train_from_iterator(texts, trainer=trainer)
        return cls("bpe", bpe)

    @property
    def vocab_size(self) -> int:
        return 257 if self._bpe is None else int(self._bpe.get_vocab_size())

    @property
    def bos_id(self) -> int:
        return 256 if self._bpe is None else int(self._bpe.token_to_id(BOS))

    def token_bytes(self) -> npt.NDArray[np.int32]:
        """UTF-8 bytes each id decodes to; 0 for special tokens (excluded by the metric)."""
        if self._bpe is None:
            table = np.ones(257, dtype=np.int32)
            table[256] = 0
            return table
        byte_of = {c: b for b, c in _bytes_to_unicode().items()}
        table = np.zeros(self.vocab_size, dtype=np.int32)
        for token, idx in self._bpe.get_vocab().items():
            if token != BOS:
                table[idx] = sum(1 for ch in token if ch in byte_of)
        return table

    def encode_documents(self, texts: list[str]) -> npt.NDArray[np.uint32]:
        """BOS + tokens for each document, concatenated."""
        parts: list[npt.NDArray[np.uint32]] = []
        bos = np.array([self.bos_id], dtype=np.uint32)
        if self._bpe is None:
            for text in texts:
                parts += [bos, np.frombuffer(text.encode(), dtype=np.uint8).astype(np.uint32)]
        else:
            for enc in self._bpe.encode_batch(texts, add_special_tokens=False):
                parts += [bos, np.asarray(enc.ids, dtype=np.uint32)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)

    def save(self, path: Path) -> None:
        if self._bpe is not None:
            self._bpe.save(str(path))


def config_hash(config: DataConfig) -> str:
    key = {"version": PREP_VERSION, **asdict(config),
           "source_digest": corpus.source_digest(config.source)}
    if config.tokenizer == "byte":
        key.pop("vocab_size")
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def prepare(config: DataConfig | None = None, cache: Path | None = None) -> PreparedData:
    """Prepare (or reuse) the token shards for `config`; deterministic and cached."""
    config = config or DataConfig()
    config.validate()
    root = (cache or corpus.cache_dir()) / "data"
    digest = config_hash(config)
    final = root / digest
    if (final / "meta.json").exists():
        return PreparedData(final, json.loads((final / "meta.json").read_text()))
    started = time.monotonic()
    docs = corpus.load_documents(config.source, cache)
    train_works, val_works = corpus.split_works(docs, config.val_fraction)
    train_texts = [d.text for d in docs if d.work in train_works]
    val_texts = [d.text for d in docs if d.work in val_works]
    tokenizer = Tokenizer.train(config, train_texts)  # never sees validation text
    table = tokenizer.token_bytes()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=root))
    try:
        common = {"vocab_size": tokenizer.vocab_size, "tokenizer": config.tokenizer,
                  "bos_id": tokenizer.bos_id, "seq_len": config.seq_len,
                  "eval_batch_size": config.eval_batch_size, "hash": digest}
        split_meta = {}
        for name, texts, works in (("train", train_texts, train_works),
                                   ("val", val_texts, val_works)):
            tokens = tokenizer.encode_documents(texts)
            extra = {"eval_tokens": config.eval_tokens} if name == "val" else {}
            shards.write_split(tmp / name, tokens, table,
                               {**common, **extra, "split": name, "works": sorted(works)})
            split_meta[name] = {"num_tokens": len(tokens), "works": len(works)}
        tokenizer.save(tmp / "tokenizer.json")
        meta = {**common, "config": asdict(config), "splits": split_meta,
                "prepare_seconds": round(time.monotonic() - started, 2)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first; keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PreparedData(final, json.loads((final / "meta.json").read_text()))
