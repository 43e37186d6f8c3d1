"""Fit a ridge regression on a Fourier basis (harmonics of FREQUENCY) to
/data/train/samples.csv; write out/model.npz. Deterministic."""

import os

import numpy as np

FREQUENCY = 1.0  # cycles over the unit interval of the basis's first harmonic
HARMONICS = 3
RIDGE = 0.001
FIT_INTERCEPT = True


def basis(x: np.ndarray) -> np.ndarray:
    k = np.arange(1, HARMONICS + 1)
    angle = 2 * np.pi * FREQUENCY * np.outer(x, k)
    columns = [np.sin(angle), np.cos(angle)]
    if FIT_INTERCEPT:
        columns.append(np.ones((len(x), 1)))
    return np.hstack(columns)


def main() -> None:
    data = np.loadtxt("/data/train/samples.csv", delimiter=",", skiprows=1)
    x, y = data[:, 0], data[:, 1]
    phi = basis(x)
    coef = np.linalg.solve(phi.T @ phi + RIDGE * np.eye(phi.shape[1]), phi.T @ y)
    os.makedirs("out", exist_ok=True)
    np.savez("out/model.npz", coef=coef, frequency=np.array([FREQUENCY]),
             harmonics=np.array([HARMONICS]), intercept=np.array([FIT_INTERCEPT]))
    print(f"train_mse {float(np.mean((phi @ coef - y) ** 2)):.4f}")


if __name__ == "__main__":
    main()
