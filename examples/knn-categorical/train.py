"""A k-nearest-neighbour classifier: choose its features and scaling on
/data/train/points.csv and store what the scorer needs in out/model.npz (the training
points, the scaling, and the settings). Deterministic."""

import os

import numpy as np

K = 1
METRIC = "chebyshev"  # "euclidean", "manhattan", "cosine" or "chebyshev"
WEIGHTS = "uniform"  # or "distance"
FEATURES = 32  # the first FEATURES columns are used
SCALING = "none"  # "none", "standard" (mean and deviation) or "robust" (median and IQR)

METRICS = ("euclidean", "manhattan", "cosine", "chebyshev")


def main() -> None:
    data = np.loadtxt("/data/train/points.csv", delimiter=",", skiprows=1)
    x, y = data[:, :FEATURES], data[:, -1]
    centre, spread = np.zeros(FEATURES), np.ones(FEATURES)
    if SCALING == "standard":
        centre, spread = x.mean(axis=0), x.std(axis=0) + 1e-12
    elif SCALING == "robust":
        q1, centre, q3 = np.percentile(x, [25, 50, 75], axis=0)
        spread = q3 - q1 + 1e-12
    os.makedirs("out", exist_ok=True)
    np.savez("out/model.npz", x=(x - centre) / spread, y=y, centre=centre, spread=spread,
             k=np.array([K]), metric=np.array([METRICS.index(METRIC)]),
             distance_weighted=np.array([WEIGHTS == "distance"]))
    print(f"features {FEATURES}, k {K}, {METRIC}, {WEIGHTS}, {SCALING}")


if __name__ == "__main__":
    main()
