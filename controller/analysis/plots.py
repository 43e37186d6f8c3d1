"""Figures as base64 PNG, so a report is one self-contained HTML file.

`progress_chart` reads like Karpathy's autoresearch chart: every trial a point (the
baseline a diamond, discards grey, kept ones green), the frontier of kept results as a
step line. Nothing leaves the axis unmarked: a point beyond the worse y-limit is drawn
as a triangle on that edge and counted in the legend, and crashes, which have no value,
sit in a strip of their own under the axis instead of posing as measurements.
`arm_curves` draws one small panel per arm (bands never hide each other) with the
control's mean in every panel; `arm_deltas` shows every repeat's Δ per arm. Every
y-axis reads "lower is better"; legends sit outside the data.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import matplotlib
import numpy as np
from matplotlib.artist import Artist
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the headless backend

from controller.analysis.curves import Point
from controller.analysis.stats import FloatArray, bootstrap_band
from controller.research.task import GPT, Objective

MIN_VALUES_TO_CLIP = 10  # fewer points never crowd the axis: show them all
GREY, GREEN, RED, BLUE, ORANGE = "#9a9a9a", "#2a9d3f", "#c0392b", "#1f5fbf", "#e67e22"


def to_base64(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


@dataclass(frozen=True)
class Layout:
    """Which trial is drawn how on the progress chart; the legend's counts come from it,
    so the report can print the same counts next to its table."""

    baseline: list[Point] = field(default_factory=list)
    kept: list[Point] = field(default_factory=list)  # kept after the baseline
    discarded: list[Point] = field(default_factory=list)
    crashed: list[Point] = field(default_factory=list)  # crash status or no finite value
    above: list[Point] = field(default_factory=list)  # valued, but past the worse limit
    ylim: tuple[float, float] | None = None

    def counts(self) -> dict[str, int]:
        return {"baseline": len(self.baseline), "kept": len(self.kept),
                "discarded": len(self.discarded), "crashed": len(self.crashed),
                "off the axis": len(self.above)}


def _value(p: Point) -> float | None:
    if p.status == "crash" or p.loss is None or not math.isfinite(p.loss):
        return None
    return p.loss


def layout(points: Sequence[Point]) -> Layout:
    """Classify the trials and choose the y-limits: the whole frontier (baseline and
    kept) stays on the axis, and so does every discard up to 3 interquartile ranges
    above the upper quartile; the discards beyond that are marked on the top edge.
    Under MIN_VALUES_TO_CLIP values every point stays on the axis."""
    out = Layout()
    for p in points:
        if _value(p) is None:
            out.crashed.append(p)
        elif p.index == 0 and p.status == "keep":
            out.baseline.append(p)
        elif p.status == "keep":
            out.kept.append(p)
        else:
            out.discarded.append(p)
    values = sorted(v for p in points if (v := _value(p)) is not None)
    if len(values) <= 2:
        return out
    frontier = [v for p in out.baseline + out.kept if (v := _value(p)) is not None]
    q1, q3 = (float(q) for q in np.percentile(values, [25, 75]))
    fence = q3 + 3 * (q3 - q1) if len(values) >= MIN_VALUES_TO_CLIP else values[-1]
    top = max([min(values[-1], fence), *frontier])
    bottom = values[0]
    pad = max(top - bottom, 1e-4) * 0.1
    above = [p for p in out.discarded if (_value(p) or 0.0) > top + pad]
    over = {p.index for p in above}
    return Layout(out.baseline, out.kept, [p for p in out.discarded if p.index not in over],
                  out.crashed, above, (bottom - pad, top + pad))


def progress_chart(points: Sequence[Point], title: str,
                   objective: Objective = GPT) -> tuple[str, Layout]:
    """The chart (base64 PNG) and the layout its legend counts. Points hold the loss;
    the chart shows the task's metric (negated back for a maximised one), so the worse
    edge, where points beyond the axis are marked, is the top or the bottom."""
    lay = layout(points)
    show = objective.shown
    fig, (ax, strip) = plt.subplots(
        2, 1, figsize=(9, 5), sharex=True, gridspec_kw={"height_ratios": [6, 0.7],
                                                       "hspace": 0.08})

    def scatter(group: list[Point], label: str, **style: object) -> None:
        if group:
            ax.scatter([p.index for p in group], [show(p.loss or 0.0) for p in group],
                       label=f"{label} ({len(group)})", **style)

    scatter(lay.discarded, "discarded", s=14, color=GREY, zorder=2)
    scatter(lay.kept, "kept", s=36, color=GREEN, edgecolor="black", linewidth=0.5, zorder=3)
    scatter(lay.baseline, "baseline", s=50, marker="D", color=BLUE, edgecolor="black",
            linewidth=0.5, zorder=3)
    frontier = sorted(lay.baseline + lay.kept, key=lambda p: p.index)
    if frontier:
        last = max(p.index for p in points)
        xs = [p.index for p in frontier] + [last]
        ys = [show(p.loss or 0.0) for p in frontier] + [show(frontier[-1].loss or 0.0)]
        ax.step(xs, ys, where="post", color=GREEN, linewidth=1.5, label="best so far",
                zorder=1)
    if lay.ylim is not None:
        low, high = sorted(show(v) for v in lay.ylim)
        ax.set_ylim(low, high)
        edge, marker, offset = (low, "v", 8) if objective.maximize else (high, "^", -14)
        if lay.above:
            ax.scatter([p.index for p in lay.above], [edge] * len(lay.above), marker=marker,
                       s=60, color=ORANGE, edgecolor="black", linewidth=0.5, clip_on=False,
                       zorder=4, label=f"discarded, off the axis ({len(lay.above)})")
        for p in lay.above[:12]:
            ax.annotate(f"{show(p.loss or 0.0):.4g}", (p.index, edge), xytext=(0, offset),
                        textcoords="offset points", ha="center", fontsize=7, color=ORANGE)
    strip.scatter([p.index for p in lay.crashed], [0.0] * len(lay.crashed), marker="x",
                  s=40, color=RED, label=f"crashed, no value ({len(lay.crashed)})")
    strip.set_yticks([0.0], ["crashed"])
    strip.set_ylim(-1, 1)
    strip.grid(alpha=0.3, axis="x")
    strip.set_xlabel("trial")
    strip.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{objective.metric} ({objective.better} is better)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    crash_handles, crash_labels = strip.get_legend_handles_labels()
    fig.legend(handles + crash_handles, labels + crash_labels, loc="upper left",
               bbox_to_anchor=(0.91, 0.88), fontsize=8, frameon=False)
    return to_base64(fig), lay


def arm_curves(curves: dict[str, FloatArray], control: str, title: str,
               identical: dict[str, str] | None = None, loss: str = "val_bpb") -> str:
    """One panel per arm: its mean best-so-far Δ`loss` against the baseline (lower is
    better) with a 95% bootstrap band, and the control arm's mean dashed in each panel.
    `identical` maps an arm to the arm it duplicates; its panel says so."""
    drawn = {name: data for name, data in curves.items()
             if data.size and np.all(np.isfinite(data))}
    cols = max(1, min(3, len(drawn)))
    rows = max(1, math.ceil(len(drawn) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows + 0.6),
                             sharex=True, sharey=True, squeeze=False)
    reference = drawn.get(control)
    ref_mean = -reference.mean(axis=0) if reference is not None else None
    for ax, (name, data) in zip(axes.flat, drawn.items(), strict=False):
        mean, low, high = bootstrap_band(-data)  # improvement -> Δ (lower is better)
        x = np.arange(mean.size)
        ax.fill_between(x, low, high, color=BLUE, alpha=0.25, linewidth=0,
                        label="95% bootstrap band")
        ax.plot(x, mean, color=BLUE, linewidth=1.6, label="mean of the arm's runs")
        if ref_mean is not None and name != control:
            ax.plot(x, ref_mean[:mean.size], color="black", linestyle="--", linewidth=1,
                    label=f"control ({control}) mean")
        same = (identical or {}).get(name)
        ax.set_title(f"{name} (n={data.shape[0]})" + (f"\nidentical to {same}" if same
                                                      else ""), fontsize=9)
        ax.axhline(0, color=GREY, linewidth=0.6)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(drawn):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("trial")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[:, 0]:
        ax.set_ylabel(f"best Δ{loss}\n(lower is better)")
    fig.suptitle(title)
    handles: dict[str, Artist] = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncols=3,
               fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.06))
    fig.tight_layout()
    return to_base64(fig)


def arm_deltas(deltas: dict[str, list[float]], noise: float, title: str,
               loss: str = "val_bpb") -> str:
    fig, ax = plt.subplots(figsize=(9, 3.8))
    names = list(deltas)
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        ys = [v for v in deltas[name] if math.isfinite(v)]
        xs = i + rng.uniform(-0.12, 0.12, len(ys))
        ax.scatter(xs, ys, s=18, alpha=0.8, color=BLUE,
                   label="one repeat" if i == 0 else None)
        if ys:
            ax.hlines(float(np.mean(ys)), i - 0.3, i + 0.3, color="black", linewidth=2,
                      label="mean" if i == 0 else "_nolegend_")
    if math.isfinite(noise):
        ax.axhspan(-2 * noise, 2 * noise, color="#f4d03f", alpha=0.3,
                   label="±2 sigma of one evaluation")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel(f"Δ{loss} on fresh seeds\n(lower is better)")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return to_base64(fig)
