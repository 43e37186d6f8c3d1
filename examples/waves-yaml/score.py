"""Trusted scorer: r2 of out/model.npz (phase 1's, untrusted) on /data/eval.

The model file is checked before use: size, no pickles, the expected arrays, shapes
and finite values. The result is one JSON object on the last line of stdout."""

import json
import os

import numpy as np

MODEL = "out/model.npz"
MAX_BYTES = 16 << 20
MAX_FEATURES = 1 << 14


def load() -> dict:
    if not os.path.isfile(MODEL) or os.path.getsize(MODEL) > MAX_BYTES:
        raise SystemExit(f"{MODEL} is missing or over {MAX_BYTES} bytes")
    with np.load(MODEL, allow_pickle=False) as archive:
        m = {k: np.asarray(archive[k], dtype=np.float64) for k in ("omega", "phase", "coef")}
    n = m["phase"].shape[0] if m["phase"].ndim == 1 else -1
    shapes = {"omega": (2, n), "phase": (n,), "coef": (n + 1,)}
    if not 1 <= n <= MAX_FEATURES or any(m[k].shape != s for k, s in shapes.items()):
        raise SystemExit(f"{MODEL} does not hold a model of the expected shapes")
    if not all(np.isfinite(a).all() for a in m.values()):
        raise SystemExit(f"{MODEL} holds non-finite values")
    return m


def main() -> None:
    m = load()
    data = np.loadtxt("/data/eval/samples.csv", delimiter=",", skiprows=1)
    xy, z = data[:, :2], data[:, 2]
    n = len(m["phase"])
    phi = np.sqrt(2.0 / n) * np.cos(xy @ m["omega"] + m["phase"])
    pred = phi @ m["coef"][:-1] + m["coef"][-1]
    r2 = 1.0 - float(np.sum((z - pred) ** 2) / np.sum((z - z.mean()) ** 2))
    print(json.dumps({"r2": r2, "n": len(z)}))


if __name__ == "__main__":
    main()
