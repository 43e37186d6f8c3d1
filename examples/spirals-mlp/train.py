"""Train a one-hidden-layer MLP on /data/train/points.csv; write out/model.npz."""

import os

import numpy as np

HIDDEN = 16
LEARNING_RATE = 0.1
EPOCHS = 300
WEIGHT_DECAY = 0.0001
INIT_SCALE = 1.0


def main() -> None:
    rng = np.random.default_rng(int(os.environ.get("TRIAL_SEED", "0")))
    data = np.loadtxt("/data/train/points.csv", delimiter=",", skiprows=1)
    x, y = data[:, :2], data[:, 2]
    w1 = rng.normal(0.0, INIT_SCALE, (2, HIDDEN))
    b1 = np.zeros(HIDDEN)
    w2 = rng.normal(0.0, INIT_SCALE / np.sqrt(HIDDEN), HIDDEN)
    b2 = 0.0
    for _ in range(EPOCHS):
        h = np.tanh(x @ w1 + b1)
        p = 1.0 / (1.0 + np.exp(-(h @ w2 + b2)))
        g = (p - y) / len(y)  # d loss / d logit of the mean cross-entropy
        gw2 = h.T @ g + WEIGHT_DECAY * w2
        gh = np.outer(g, w2) * (1.0 - h * h)
        w1 -= LEARNING_RATE * (x.T @ gh + WEIGHT_DECAY * w1)
        b1 -= LEARNING_RATE * gh.sum(axis=0)
        w2 -= LEARNING_RATE * gw2
        b2 -= LEARNING_RATE * g.sum()
    os.makedirs("out", exist_ok=True)
    np.savez("out/model.npz", w1=w1, b1=b1, w2=w2, b2=np.array([b2]))
    train_error = float(np.mean((p > 0.5) != (y > 0.5)))
    print(f"train_error {train_error:.4f}")


if __name__ == "__main__":
    main()
