"""Trusted scorer: the mean squared error of out/model.npz (phase 1's, untrusted) on
/data/eval. The basis is rebuilt here from the model's frequency and harmonics, not taken
from train.py. The model file is checked before use: size, no pickles, the expected
arrays, shapes and finite values. The result is one JSON object on the last line of
stdout."""

import json
import os

import numpy as np

MODEL = "out/model.npz"
MAX_BYTES = 1 << 20
MAX_HARMONICS = 256


def main() -> None:
    if not os.path.isfile(MODEL) or os.path.getsize(MODEL) > MAX_BYTES:
        raise SystemExit(f"{MODEL} is missing or over {MAX_BYTES} bytes")
    with np.load(MODEL, allow_pickle=False) as archive:
        coef = np.asarray(archive["coef"], dtype=np.float64)
        frequency = float(np.asarray(archive["frequency"], dtype=np.float64).reshape(-1)[0])
        harmonics = int(np.asarray(archive["harmonics"]).reshape(-1)[0])
        intercept = bool(np.asarray(archive["intercept"]).reshape(-1)[0])
    if not 1 <= harmonics <= MAX_HARMONICS or not np.isfinite(frequency):
        raise SystemExit(f"{MODEL}: harmonics or frequency out of range")
    if coef.shape != (2 * harmonics + intercept,) or not np.isfinite(coef).all():
        raise SystemExit(f"{MODEL} does not hold coefficients of the expected shape")
    data = np.loadtxt("/data/eval/samples.csv", delimiter=",", skiprows=1)
    x, y = data[:, 0], data[:, 1]
    angle = 2 * np.pi * frequency * np.outer(x, np.arange(1, harmonics + 1))
    columns = [np.sin(angle), np.cos(angle)] + ([np.ones((len(x), 1))] if intercept else [])
    mse = float(np.mean((np.hstack(columns) @ coef - y) ** 2))
    print(json.dumps({"val_mse": mse, "n": len(y)}))


if __name__ == "__main__":
    main()
