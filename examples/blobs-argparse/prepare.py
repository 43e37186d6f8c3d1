"""Make data/train and data/eval: five Gaussian blobs in 12 dimensions, two of them
rare, with features on scales from 0.01 to 100 (seed 0), so the committed CSVs can be
checked by running this again."""

from pathlib import Path

import numpy as np

PREPARE_SEED = 0
CLASSES = 5
DIMENSIONS = 12
SCALES = np.logspace(-2, 2, DIMENSIONS)
SHARES = np.array([0.34, 0.34, 0.2, 0.08, 0.04])


def blobs(n: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    label = rng.choice(CLASSES, size=n, p=SHARES)
    x = centres[label] + rng.normal(0.0, 1.0, (n, DIMENSIONS))
    return np.column_stack([x * SCALES, label])


def main() -> None:
    rng = np.random.default_rng(PREPARE_SEED)
    centres = rng.normal(0.0, 1.1, (CLASSES, DIMENSIONS))
    here = Path(__file__).parent
    header = ",".join([f"x{i}" for i in range(DIMENSIONS)] + ["label"])
    for split, n in (("train", 900), ("eval", 600)):
        (here / "data" / split).mkdir(parents=True, exist_ok=True)
        np.savetxt(here / "data" / split / "points.csv", blobs(n, centres, rng), fmt="%.6g",
                   delimiter=",", header=header, comments="")


if __name__ == "__main__":
    main()
