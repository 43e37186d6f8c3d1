"""Train a one-hidden-layer tanh MLP by minibatch SGD with momentum on
/data/train/samples.csv for a fixed number of epochs (initial weights and batch order
from $TRIAL_SEED); write out/model.npz. After each epoch it reports its own estimate of
val_mse, on the last eighth of the training data held out, as a progress line
(`bilevel-progress {"step": epoch, "val_mse": ...}`): the run's pruner may stop a
hopeless run early; the trusted scorer alone decides the metric."""

import json
import os

import numpy as np

HIDDEN = 16
LEARNING_RATE = 0.01
MOMENTUM = 0.5
INIT_SCALE = 0.5
BATCH_SIZE = 32
epochs = 400  # fixed: the budget each trial trains for (lowercase: not a knob)


def main() -> None:
    rng = np.random.default_rng(int(os.environ.get("TRIAL_SEED", "0")))
    data = np.loadtxt("/data/train/samples.csv", delimiter=",", skiprows=1)
    cut = len(data) * 7 // 8
    x, y = data[:cut, :-1], data[:cut, -1]
    x_held, y_held = data[cut:, :-1], data[cut:, -1]
    w1 = rng.normal(0.0, INIT_SCALE, (x.shape[1], HIDDEN))
    b1 = np.zeros(HIDDEN)
    w2 = rng.normal(0.0, INIT_SCALE, HIDDEN)
    b2 = 0.0
    velocity = [np.zeros_like(w1), np.zeros_like(b1), np.zeros_like(w2), 0.0]
    with np.errstate(all="ignore"):
        for epoch in range(1, epochs + 1):
            order = rng.permutation(len(y))
            for start in range(0, len(y), BATCH_SIZE):
                idx = order[start:start + BATCH_SIZE]
                h = np.tanh(x[idx] @ w1 + b1)
                err = h @ w2 + b2 - y[idx]
                g2 = h.T @ err / len(idx)
                gh = np.outer(err, w2) * (1.0 - h * h) / len(idx)
                grads = [x[idx].T @ gh, gh.sum(axis=0), g2, float(err.mean())]
                for i, g in enumerate(grads):
                    velocity[i] = MOMENTUM * velocity[i] - LEARNING_RATE * g
                w1, b1, w2 = w1 + velocity[0], b1 + velocity[1], w2 + velocity[2]
                b2 += velocity[3]
            held = float(np.mean((np.tanh(x_held @ w1 + b1) @ w2 + b2 - y_held) ** 2))
            print("bilevel-progress " + json.dumps({"step": epoch, "val_mse": held}),
                  flush=True)
            if not np.isfinite(held) or held > 1e6:
                raise SystemExit(f"diverged in epoch {epoch}: held-out mse {held}")
    os.makedirs("out", exist_ok=True)
    np.savez("out/model.npz", w1=w1, b1=b1, w2=w2, b2=np.array([b2]))


if __name__ == "__main__":
    main()
