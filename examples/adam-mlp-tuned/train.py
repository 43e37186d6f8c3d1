"""Train a two-hidden-layer ReLU MLP with Adam on /data/train/points.csv (initial
weights and batch order from $TRIAL_SEED); write out/model.npz. The defaults are a
researcher's tuned settings: good, not optimal."""

import os

import numpy as np

HIDDEN = 32
LEARNING_RATE = 0.004
BETA1 = 0.9
BETA2 = 0.99
WEIGHT_DECAY = 0.0003
BATCH_SIZE = 64
EPOCHS = 12
INIT_GAIN = 1.0  # times He initialisation
LR_DECAY = 0.9  # learning rate factor per epoch
LABEL_SMOOTHING = 0.05


def main() -> None:
    rng = np.random.default_rng(int(os.environ.get("TRIAL_SEED", "0")))
    data = np.loadtxt("/data/train/points.csv", delimiter=",", skiprows=1)
    x, y = data[:, :-1], data[:, -1]
    target = y * (1 - LABEL_SMOOTHING) + 0.5 * LABEL_SMOOTHING
    sizes = [(x.shape[1], HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, 1)]
    params = []
    for fan_in, fan_out in sizes:
        params += [rng.normal(0.0, INIT_GAIN * np.sqrt(2.0 / fan_in), (fan_in, fan_out)),
                   np.zeros(fan_out)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    step, lr = 0, LEARNING_RATE
    for _ in range(EPOCHS):
        order = rng.permutation(len(y))
        for start in range(0, len(y), BATCH_SIZE):
            idx = order[start:start + BATCH_SIZE]
            h1 = np.maximum(x[idx] @ params[0] + params[1], 0.0)
            h2 = np.maximum(h1 @ params[2] + params[3], 0.0)
            p = 1.0 / (1.0 + np.exp(-(h2 @ params[4] + params[5])[:, 0]))
            g = ((p - target[idx]) / len(idx))[:, None]
            g_h2 = (g @ params[4].T) * (h2 > 0)
            g_h1 = (g_h2 @ params[2].T) * (h1 > 0)
            grads = [x[idx].T @ g_h1, g_h1.sum(0), h1.T @ g_h2, g_h2.sum(0), h2.T @ g, g.sum(0)]
            step += 1
            for i, grad in enumerate(grads):
                grad = grad + WEIGHT_DECAY * params[i]
                m[i] = BETA1 * m[i] + (1 - BETA1) * grad
                v[i] = BETA2 * v[i] + (1 - BETA2) * grad * grad
                m_hat, v_hat = m[i] / (1 - BETA1**step), v[i] / (1 - BETA2**step)
                params[i] = params[i] - lr * m_hat / (np.sqrt(v_hat) + 1e-8)
        lr *= LR_DECAY
    if not all(np.isfinite(p).all() for p in params):
        raise SystemExit("training diverged: non-finite weights")
    os.makedirs("out", exist_ok=True)
    np.savez("out/model.npz", **{f"p{i}": p for i, p in enumerate(params)})


if __name__ == "__main__":
    main()
