"""Make data/train and data/eval: noisy samples of z = sin(3x) cos(2y) + x y on
[-1, 1]^2, deterministic (seed 0), so the committed CSVs can be checked by running this."""

from pathlib import Path

import numpy as np


def samples(n: int, rng: np.random.Generator) -> np.ndarray:
    xy = rng.uniform(-1.0, 1.0, (n, 2))
    z = np.sin(3 * xy[:, 0]) * np.cos(2 * xy[:, 1]) + xy[:, 0] * xy[:, 1]
    return np.column_stack([xy, z + rng.normal(0.0, 0.1, n)])


def main() -> None:
    rng = np.random.default_rng(0)
    here = Path(__file__).parent
    for split, n in (("train", 600), ("eval", 400)):
        (here / "data" / split).mkdir(parents=True, exist_ok=True)
        np.savetxt(here / "data" / split / "samples.csv", samples(n, rng), fmt="%.5f",
                   delimiter=",", header="x,y,z", comments="")


if __name__ == "__main__":
    main()
