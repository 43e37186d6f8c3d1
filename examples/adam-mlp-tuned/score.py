"""Trusted scorer: the cross-entropy and error of out/model.npz (phase 1's, untrusted) on
/data/eval. The model file is checked before use: size, no pickles, the expected arrays,
shapes and finite values. The result is one JSON object on the last line of stdout."""

import json
import os

import numpy as np

MODEL = "out/model.npz"
MAX_BYTES = 4 << 20
MAX_HIDDEN = 2048


def main() -> None:
    if not os.path.isfile(MODEL) or os.path.getsize(MODEL) > MAX_BYTES:
        raise SystemExit(f"{MODEL} is missing or over {MAX_BYTES} bytes")
    with np.load(MODEL, allow_pickle=False) as archive:
        p = [np.asarray(archive[f"p{i}"], dtype=np.float64) for i in range(6)]
    data = np.loadtxt("/data/eval/points.csv", delimiter=",", skiprows=1)
    x, y = data[:, :-1], data[:, -1]
    hidden = p[0].shape[-1]
    shapes = [(x.shape[1], hidden), (hidden,), (hidden, hidden), (hidden,), (hidden, 1), (1,)]
    if not 1 <= hidden <= MAX_HIDDEN or [a.shape for a in p] != shapes:
        raise SystemExit(f"{MODEL} does not hold an MLP of the expected shapes")
    if not all(np.isfinite(a).all() for a in p):
        raise SystemExit(f"{MODEL} holds non-finite weights")
    h1 = np.maximum(x @ p[0] + p[1], 0.0)
    z = (np.maximum(h1 @ p[2] + p[3], 0.0) @ p[4] + p[5])[:, 0]
    loss = float(np.mean(np.logaddexp(0.0, -np.where(y > 0.5, z, -z))))
    print(json.dumps({"val_loss": loss, "val_error": float(np.mean((z > 0) != (y > 0.5))),
                      "n": len(y)}))


if __name__ == "__main__":
    main()
