"""Make data/train and data/eval: a two-class problem in 6 inputs with a curved boundary
and 8% label noise (seed 0), so the committed CSVs can be checked by running this again."""

from pathlib import Path

import numpy as np

PREPARE_SEED = 0


def points(n: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(0.0, 1.0, (n, 6))
    margin = x[:, 0] * x[:, 1] + np.sin(2 * x[:, 2]) + 0.5 * x[:, 3] ** 2 - 0.5
    label = (margin > 0).astype(float)
    flip = rng.random(n) < 0.08
    label[flip] = 1.0 - label[flip]
    return np.column_stack([x, label])


def main() -> None:
    rng = np.random.default_rng(PREPARE_SEED)
    here = Path(__file__).parent
    for split, n in (("train", 1024), ("eval", 1024)):
        (here / "data" / split).mkdir(parents=True, exist_ok=True)
        np.savetxt(here / "data" / split / "points.csv", points(n, rng), fmt="%.5f",
                   delimiter=",", header="x0,x1,x2,x3,x4,x5,label", comments="")


if __name__ == "__main__":
    main()
