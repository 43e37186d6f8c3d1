"""Trusted scorer: the mean cross-entropy of out/model.npz (phase 1's, untrusted) on
data/eval, every class weighted equally, and the error rate.

The model file is checked before use: size, no pickles, the expected arrays, shapes and
finite values. The result is one JSON object on the last line of stdout."""

import json
import os

import numpy as np

MODEL = "out/model.npz"
MAX_BYTES = 1 << 20


def load(dimensions: int, classes: int) -> dict:
    if not os.path.isfile(MODEL) or os.path.getsize(MODEL) > MAX_BYTES:
        raise SystemExit(f"{MODEL} is missing or over {MAX_BYTES} bytes")
    with np.load(MODEL, allow_pickle=False) as archive:
        arrays = {k: np.asarray(archive[k], dtype=np.float64)
                  for k in ("w", "b", "mean", "scale")}
    shapes = {"w": (dimensions, classes), "b": (classes,), "mean": (dimensions,),
              "scale": (dimensions,)}
    if any(arrays[k].shape != s for k, s in shapes.items()):
        raise SystemExit(f"{MODEL} does not hold a model of the expected shapes")
    if not all(np.isfinite(a).all() for a in arrays.values()) or (arrays["scale"] <= 0).any():
        raise SystemExit(f"{MODEL} holds non-finite weights or scales")
    return arrays


def main() -> None:
    data = np.loadtxt("data/eval/points.csv", delimiter=",", skiprows=1)
    x, y = data[:, :-1], data[:, -1].astype(int)
    classes = 5
    m = load(x.shape[1], classes)
    z = ((x - m["mean"]) / m["scale"]) @ m["w"] + m["b"]
    log_p = z - z.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    per_class = [float(-log_p[y == c, c].mean()) for c in range(classes)]
    loss = float(np.mean(per_class))
    error = float(np.mean(z.argmax(axis=1) != y))
    print(json.dumps({"val_loss": loss, "val_error": error, "n": len(y)}))


if __name__ == "__main__":
    main()
