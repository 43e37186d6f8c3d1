"""Fit multinomial logistic regression to data/train/points.csv by full-batch gradient
descent from zero weights; write out/model.npz. Settings are command-line flags, as in
most research scripts: the task's knobs are these flags (bilevel-task.toml passes them
through `{name}` templates; their baselines are the defaults below)."""

import argparse
import os

import numpy as np


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lr", type=float, default=0.0001, help="step size")
    parser.add_argument("--l2", type=float, default=1.0, help="weight decay")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--standardize", choices=["yes", "no"], default="no")
    return parser.parse_args()


def main() -> None:
    args = parse()
    data = np.loadtxt("data/train/points.csv", delimiter=",", skiprows=1)
    x, y = data[:, :-1], data[:, -1].astype(int)
    classes = int(y.max()) + 1
    mean, scale = np.zeros(x.shape[1]), np.ones(x.shape[1])
    if args.standardize == "yes":
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-12
    x = (x - mean) / scale
    onehot = np.eye(classes)[y]
    w, b = np.zeros((x.shape[1], classes)), np.zeros(classes)
    with np.errstate(over="raise", invalid="raise"):
        for _ in range(args.epochs):
            z = x @ w + b
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            g = (p - onehot) / len(y)
            w -= args.lr * (x.T @ g + args.l2 * w)
            b -= args.lr * g.sum(axis=0)
    os.makedirs("out", exist_ok=True)
    np.savez("out/model.npz", w=w, b=b, mean=mean, scale=scale)
    print(f"train_accuracy {float(np.mean((x @ w + b).argmax(axis=1) == y)):.4f}")


if __name__ == "__main__":
    main()
