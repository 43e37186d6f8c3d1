"""Make data/train and data/eval: samples of a periodic signal, a base tone of 3.7
cycles with its third harmonic, plus noise (seed 0), so the committed CSVs can be
checked by running this again."""

from pathlib import Path

import numpy as np

PREPARE_SEED = 0
BASE = 3.7


def signal(x: np.ndarray) -> np.ndarray:
    return np.sin(2 * np.pi * BASE * x + 0.3) + 0.6 * np.sin(2 * np.pi * 3 * BASE * x + 1.1)


def main() -> None:
    rng = np.random.default_rng(PREPARE_SEED)
    here = Path(__file__).parent
    for split, n in (("train", 160), ("eval", 400)):
        x = rng.uniform(0.0, 1.0, n)
        y = signal(x) + rng.normal(0.0, 0.25, n)
        (here / "data" / split).mkdir(parents=True, exist_ok=True)
        np.savetxt(here / "data" / split / "samples.csv", np.column_stack([x, y]),
                   fmt="%.6f", delimiter=",", header="x,y", comments="")


if __name__ == "__main__":
    main()
