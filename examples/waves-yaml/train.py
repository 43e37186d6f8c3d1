"""Fit ridge regression on random Fourier features of the training samples, with every
setting read from config.yaml, as many research scripts keep them; write the features
and coefficients to out/model.npz. The task's knobs are keys of config.yaml."""

import os

import numpy as np
import yaml


def features(xy: np.ndarray, omega: np.ndarray, phase: np.ndarray) -> np.ndarray:
    return np.sqrt(2.0 / len(phase)) * np.cos(xy @ omega + phase)


def main() -> None:
    with open("config.yaml", encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    model, fit = config["model"], config["fit"]
    rng = np.random.default_rng(int(os.environ.get("TRIAL_SEED", "0")))
    data = np.loadtxt(config["data"]["train"], delimiter=",", skiprows=1)
    xy, z = data[:, :2], data[:, 2]
    omega = rng.normal(0.0, 1.0 / model["length_scale"], (2, int(model["features"])))
    phase = rng.uniform(0.0, 2 * np.pi, int(model["features"]))
    phi = np.column_stack([features(xy, omega, phase), np.ones(len(z))])
    coef = np.linalg.solve(phi.T @ phi + fit["ridge"] * np.eye(phi.shape[1]), phi.T @ z)
    os.makedirs("out", exist_ok=True)
    np.savez("out/model.npz", omega=omega, phase=phase, coef=coef)
    print(f"train_rmse {float(np.sqrt(np.mean((phi @ coef - z) ** 2))):.4f}")


if __name__ == "__main__":
    main()
