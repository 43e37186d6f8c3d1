"""Make data/train and data/eval: a smooth function of 4 inputs to regress, with noise
(seed 0), so the committed CSVs can be checked by running this again."""

from pathlib import Path

import numpy as np

PREPARE_SEED = 0


def target(x: np.ndarray) -> np.ndarray:
    return np.sin(2.0 * x[:, 0]) * np.cos(x[:, 1]) + 0.5 * x[:, 2] ** 2 - 0.3 * x[:, 3]


def main() -> None:
    rng = np.random.default_rng(PREPARE_SEED)
    here = Path(__file__).parent
    for split, n in (("train", 4096), ("eval", 1024)):
        x = rng.uniform(-2.0, 2.0, (n, 4))
        y = target(x) + rng.normal(0.0, 0.1, n)
        (here / "data" / split).mkdir(parents=True, exist_ok=True)
        np.savetxt(here / "data" / split / "samples.csv", np.column_stack([x, y]),
                   fmt="%.5f", delimiter=",", header="x0,x1,x2,x3,y", comments="")


if __name__ == "__main__":
    main()
