"""Trusted scorer: the mean squared error of out/model.npz (phase 1's, untrusted) on
/data/eval. The model file is checked before use: size, no pickles, the expected
arrays, shapes and finite values. The result is one JSON object on the last line of
stdout."""

import json
import os

import numpy as np

MODEL = "out/model.npz"
MAX_BYTES = 4 << 20
MAX_HIDDEN = 4096


def main() -> None:
    if not os.path.isfile(MODEL) or os.path.getsize(MODEL) > MAX_BYTES:
        raise SystemExit(f"{MODEL} is missing or over {MAX_BYTES} bytes")
    with np.load(MODEL, allow_pickle=False) as archive:
        m = {k: np.asarray(archive[k], dtype=np.float64) for k in ("w1", "b1", "w2", "b2")}
    data = np.loadtxt("/data/eval/samples.csv", delimiter=",", skiprows=1)
    x, y = data[:, :-1], data[:, -1]
    hidden = m["w1"].shape[-1]
    shapes = {"w1": (x.shape[1], hidden), "b1": (hidden,), "w2": (hidden,), "b2": (1,)}
    if not 1 <= hidden <= MAX_HIDDEN or any(m[k].shape != s for k, s in shapes.items()):
        raise SystemExit(f"{MODEL} does not hold an MLP of the expected shapes")
    if not all(np.isfinite(a).all() for a in m.values()):
        raise SystemExit(f"{MODEL} holds non-finite weights")
    prediction = np.tanh(x @ m["w1"] + m["b1"]) @ m["w2"] + m["b2"][0]
    print(json.dumps({"val_mse": float(np.mean((prediction - y) ** 2)), "n": len(y)}))


if __name__ == "__main__":
    main()
