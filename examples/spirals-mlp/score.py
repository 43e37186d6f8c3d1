"""Trusted scorer: the loss and error of out/model.npz (phase 1's, untrusted) on /data/eval.

The model file is checked before use: size, no pickles, the expected arrays, shapes
and finite values. The result is one JSON object on the last line of stdout."""

import json
import os

import numpy as np

MODEL = "out/model.npz"
MAX_BYTES = 16 << 20
MAX_HIDDEN = 4096


def load() -> dict:
    if not os.path.isfile(MODEL) or os.path.getsize(MODEL) > MAX_BYTES:
        raise SystemExit(f"{MODEL} is missing or over {MAX_BYTES} bytes")
    with np.load(MODEL, allow_pickle=False) as archive:
        arrays = {k: np.asarray(archive[k], dtype=np.float64) for k in ("w1", "b1", "w2", "b2")}
    hidden = arrays["w1"].shape[-1]
    shapes = {"w1": (2, hidden), "b1": (hidden,), "w2": (hidden,), "b2": (1,)}
    if not 1 <= hidden <= MAX_HIDDEN or any(arrays[k].shape != s for k, s in shapes.items()):
        raise SystemExit(f"{MODEL} does not hold an MLP of the expected shapes")
    if not all(np.isfinite(a).all() for a in arrays.values()):
        raise SystemExit(f"{MODEL} holds non-finite weights")
    return arrays


def main() -> None:
    m = load()
    data = np.loadtxt("/data/eval/points.csv", delimiter=",", skiprows=1)
    x, y = data[:, :2], data[:, 2]
    logit = np.tanh(x @ m["w1"] + m["b1"]) @ m["w2"] + m["b2"][0]
    # Cross-entropy from logits, stable for large |logit|: log(1 + e^-z) for the true side.
    signed = np.where(y > 0.5, logit, -logit)
    loss = float(np.mean(np.logaddexp(0.0, -signed)))
    error = float(np.mean((logit > 0) != (y > 0.5)))
    print(json.dumps({"val_loss": loss, "val_error": error, "n": len(y)}))


if __name__ == "__main__":
    main()
