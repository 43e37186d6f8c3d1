"""Make data/train and data/eval: two interleaved noisy spirals, deterministic
(seed 0), so the committed CSVs can be checked by running this again."""

from pathlib import Path

import numpy as np

PREPARE_SEED = 0


def spirals(n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.sqrt(rng.uniform(0.05, 1.0, n)) * 3 * np.pi
    label = rng.integers(0, 2, n)
    angle = t + np.pi * label
    xy = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1) / (3 * np.pi)
    xy += rng.normal(0.0, 0.04, xy.shape)
    return np.column_stack([xy, label])


def main() -> None:
    rng = np.random.default_rng(PREPARE_SEED)
    here = Path(__file__).parent
    for split, n in (("train", 800), ("eval", 400)):
        (here / "data" / split).mkdir(parents=True, exist_ok=True)
        np.savetxt(here / "data" / split / "points.csv", spirals(n, rng), fmt="%.5f",
                   delimiter=",", header="x,y,label", comments="")


if __name__ == "__main__":
    main()
