"""Fit multinomial logistic regression to /data/train/points.csv by full-batch gradient
descent from zero weights (deterministic); write out/model.npz."""

import os

import numpy as np

LEARNING_RATE = 0.0001
L2 = 1.0
EPOCHS = 60
STANDARDIZE = False
CLASS_WEIGHTING = "none"  # or "balanced": each class weighs 1/its frequency


def main() -> None:
    data = np.loadtxt("/data/train/points.csv", delimiter=",", skiprows=1)
    x, y = data[:, :-1], data[:, -1].astype(int)
    classes = int(y.max()) + 1
    mean, scale = np.zeros(x.shape[1]), np.ones(x.shape[1])
    if STANDARDIZE:
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-12
    x = (x - mean) / scale
    onehot = np.eye(classes)[y]
    weight = np.ones(len(y))
    if CLASS_WEIGHTING == "balanced":
        weight = (len(y) / (classes * np.bincount(y, minlength=classes)))[y]
    w, b = np.zeros((x.shape[1], classes)), np.zeros(classes)
    with np.errstate(over="raise", invalid="raise"):
        for _ in range(EPOCHS):
            z = x @ w + b
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            g = (p - onehot) * weight[:, None] / weight.sum()
            w -= LEARNING_RATE * (x.T @ g + L2 * w)
            b -= LEARNING_RATE * g.sum(axis=0)
    os.makedirs("out", exist_ok=True)
    np.savez("out/model.npz", w=w, b=b, mean=mean, scale=scale)
    print(f"train_accuracy {float(np.mean((x @ w + b).argmax(axis=1) == y)):.4f}")


if __name__ == "__main__":
    main()
