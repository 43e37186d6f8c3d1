"""Fit ridge regression on random Fourier features of /data/train/samples.csv; write the
features and coefficients to out/model.npz."""

import os

import numpy as np

FEATURES = 16
LENGTH_SCALE = 2.0
RIDGE = 1.0


def features(xy: np.ndarray, omega: np.ndarray, phase: np.ndarray) -> np.ndarray:
    return np.sqrt(2.0 / len(phase)) * np.cos(xy @ omega + phase)


def main() -> None:
    rng = np.random.default_rng(int(os.environ.get("TRIAL_SEED", "0")))
    data = np.loadtxt("/data/train/samples.csv", delimiter=",", skiprows=1)
    xy, z = data[:, :2], data[:, 2]
    omega = rng.normal(0.0, 1.0 / LENGTH_SCALE, (2, FEATURES))
    phase = rng.uniform(0.0, 2 * np.pi, FEATURES)
    phi = np.column_stack([features(xy, omega, phase), np.ones(len(z))])
    coef = np.linalg.solve(phi.T @ phi + RIDGE * np.eye(phi.shape[1]), phi.T @ z)
    os.makedirs("out", exist_ok=True)
    np.savez("out/model.npz", omega=omega, phase=phase, coef=coef)
    print(f"train_rmse {float(np.sqrt(np.mean((phi @ coef - z) ** 2))):.4f}")


if __name__ == "__main__":
    main()
