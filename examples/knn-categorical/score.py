"""Trusted scorer: classify /data/eval with the k-NN model of out/model.npz (phase 1's,
untrusted) and report the cross-entropy of its vote shares (with one vote of add-one
smoothing per class) and its error rate. The model file is checked before use: size,
no pickles, the expected arrays, shapes, labels and finite values. The result is one
JSON object on the last line of stdout."""

import json
import os

import numpy as np

MODEL = "out/model.npz"
MAX_BYTES = 4 << 20
CLASSES = 3


def distances(a: np.ndarray, b: np.ndarray, metric: int) -> np.ndarray:
    if metric == 0:
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    if metric == 1:
        return np.abs(a[:, None, :] - b[None, :, :]).sum(-1)
    if metric == 2:
        na = a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-12)
        nb = b / (np.linalg.norm(b, axis=1, keepdims=True) + 1e-12)
        return 1.0 - na @ nb.T
    return np.abs(a[:, None, :] - b[None, :, :]).max(-1)


def main() -> None:
    if not os.path.isfile(MODEL) or os.path.getsize(MODEL) > MAX_BYTES:
        raise SystemExit(f"{MODEL} is missing or over {MAX_BYTES} bytes")
    with np.load(MODEL, allow_pickle=False) as archive:
        m = {k: np.asarray(archive[k]) for k in archive.files}
    data = np.loadtxt("/data/eval/points.csv", delimiter=",", skiprows=1)
    features = m["x"].shape[-1] if m["x"].ndim == 2 else 0
    k, metric = int(m["k"].reshape(-1)[0]), int(m["metric"].reshape(-1)[0])
    ok = (1 <= features < data.shape[1] and m["y"].shape == (len(m["x"]),)
          and m["centre"].shape == m["spread"].shape == (features,)
          and 1 <= k <= len(m["x"]) and 0 <= metric <= 3
          and set(np.unique(m["y"])) <= set(range(CLASSES)))
    if not ok or not all(np.isfinite(m[a].astype(float)).all() for a in ("x", "centre", "spread")):
        raise SystemExit(f"{MODEL} does not hold a k-NN model of the expected shapes")
    x, y = (data[:, :features] - m["centre"]) / m["spread"], data[:, -1].astype(int)
    d = distances(x, m["x"].astype(float), metric)
    nearest = np.argsort(d, axis=1)[:, :k]
    weights = np.ones_like(nearest, dtype=float)
    if bool(m["distance_weighted"].reshape(-1)[0]):
        weights = 1.0 / (np.take_along_axis(d, nearest, axis=1) + 1e-9)
    votes = np.zeros((len(y), CLASSES))
    for c in range(CLASSES):
        votes[:, c] = (weights * (m["y"].astype(int)[nearest] == c)).sum(axis=1)
    share = (votes + weights.sum(axis=1, keepdims=True) / k) / (
        votes.sum(axis=1, keepdims=True) + CLASSES * weights.sum(axis=1, keepdims=True) / k)
    loss = float(-np.mean(np.log(share[np.arange(len(y)), y])))
    error = float(np.mean(votes.argmax(axis=1) != y))
    print(json.dumps({"val_loss": loss, "val_error": error, "n": len(y)}))


if __name__ == "__main__":
    main()
