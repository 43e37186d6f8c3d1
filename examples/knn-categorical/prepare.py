"""Make data/train and data/eval: three classes separated in 4 informative features,
followed by 28 features of noise, all on different scales, some with outliers (seed 0),
so the committed CSVs can be checked by running this again."""

from pathlib import Path

import numpy as np

PREPARE_SEED = 0
INFORMATIVE, NOISE = 4, 28


def points(n: int, centres: np.ndarray, scales: np.ndarray,
           rng: np.random.Generator) -> np.ndarray:
    label = rng.integers(0, len(centres), n)
    signal = centres[label] + rng.normal(0.0, 1.0, (n, INFORMATIVE))
    noise = rng.standard_t(3, (n, NOISE))
    return np.column_stack([np.hstack([signal, noise]) * scales, label])


def main() -> None:
    rng = np.random.default_rng(PREPARE_SEED)
    centres = rng.normal(0.0, 1.4, (3, INFORMATIVE))
    scales = np.exp(rng.uniform(-2.0, 2.0, INFORMATIVE + NOISE))
    here = Path(__file__).parent
    header = ",".join([f"x{i}" for i in range(INFORMATIVE + NOISE)] + ["label"])
    for split, n in (("train", 600), ("eval", 400)):
        (here / "data" / split).mkdir(parents=True, exist_ok=True)
        np.savetxt(here / "data" / split / "points.csv", points(n, centres, scales, rng),
                   fmt="%.5g", delimiter=",", header=header, comments="")


if __name__ == "__main__":
    main()
