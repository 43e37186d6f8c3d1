"""Figures as base64 PNG, so a report is one self-contained HTML file.

`progress_chart` reads like Karpathy's autoresearch chart: every trial a point
(discards grey, kept ones green, crashes as red marks on the bottom edge), the
frontier of kept results as a step line. `arm_curves` overlays each arm's mean
improvement with its bootstrap band; `arm_deltas` shows every repeat's Δ per arm.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the headless backend

from controller.analysis.curves import Point
from controller.analysis.stats import FloatArray, bootstrap_band


def to_base64(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def progress_chart(points: Sequence[Point], title: str) -> str:
    fig, ax = plt.subplots(figsize=(9, 4.5))
    valued = [(p, p.val_bpb) for p in points if p.val_bpb is not None]
    discards = [(p.index, v) for p, v in valued if p.status != "keep"]
    kept = [(p.index, v) for p, v in valued if p.status == "keep"]
    crashes = [p for p in points if p.val_bpb is None]
    ax.scatter([i for i, _ in discards], [v for _, v in discards], s=14,
               color="#b0b0b0", label=f"discarded ({len(discards)})", zorder=2)
    ax.scatter([i for i, _ in kept], [v for _, v in kept], s=36, color="#2a9d3f",
               edgecolor="black", linewidth=0.5, label=f"kept ({len(kept)})", zorder=3)
    if kept:
        last = max(p.index for p in points)
        xs = [i for i, _ in kept] + [last]
        ys = [v for _, v in kept] + [kept[-1][1]]
        ax.step(xs, ys, where="post", color="#2a9d3f", linewidth=1.5, label="best so far",
                zorder=1)
    if crashes:
        low = min((v for _, v in valued), default=1.0)
        ax.scatter([p.index for p in crashes], [low] * len(crashes), marker="x",
                   color="#c0392b", label=f"crashed ({len(crashes)})", zorder=3)
    if len(valued) > 2:
        values = sorted(v for _, v in valued)
        top = values[min(len(values) - 1, int(0.9 * len(values)))]
        bottom = values[0]
        pad = max(top - bottom, 1e-4) * 0.1
        ax.set_ylim(bottom - pad, top + pad)  # outliers above the 90th percentile clip
    ax.set_xlabel("trial")
    ax.set_ylabel("val_bpb (lower is better)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return to_base64(fig)


def arm_curves(curves: dict[str, FloatArray], title: str) -> str:
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, data in curves.items():
        if data.size == 0 or not np.all(np.isfinite(data)):
            continue
        mean, low, high = bootstrap_band(data)
        x = np.arange(mean.size)
        (line,) = ax.plot(x, mean, label=f"{name} (n={data.shape[0]})", linewidth=1.6)
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.18, linewidth=0)
    ax.set_xlabel("trial")
    ax.set_ylabel("improvement over baseline, val_bpb (higher is better)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return to_base64(fig)


def arm_deltas(deltas: dict[str, list[float]], noise: float, title: str) -> str:
    fig, ax = plt.subplots(figsize=(9, 3.8))
    names = list(deltas)
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        ys = [v for v in deltas[name] if math.isfinite(v)]
        xs = i + rng.uniform(-0.12, 0.12, len(ys))
        ax.scatter(xs, ys, s=18, alpha=0.8)
        if ys:
            ax.hlines(float(np.mean(ys)), i - 0.3, i + 0.3, color="black", linewidth=2)
    if math.isfinite(noise):
        ax.axhspan(-2 * noise, 2 * noise, color="#f4d03f", alpha=0.3,
                   label="±2 sigma of one evaluation")
        ax.legend(loc="lower right", fontsize=8)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("Δval_bpb on fresh seeds (lower is better)")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return to_base64(fig)
