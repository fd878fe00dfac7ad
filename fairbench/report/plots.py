"""Report figures: the accuracy-fairness scatter with its Pareto front, group utilities per configuration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fairbench.files import atomic_write
from fairbench.report.stats import lower_is_better, pareto_front


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Save ``fig`` to ``path`` (format from its suffix) through a temporary file and a rename. Vector files
    carry no creation date and fixed element ids, so redrawing the same figure gives the same bytes."""
    import matplotlib

    fmt = path.suffix[1:]
    metadata = {"Date": None} if fmt in ("svg", "pdf") else None
    with matplotlib.rc_context({"svg.hashsalt": "fairbench"}):
        atomic_write(
            path,
            lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format=fmt, metadata=metadata),
        )


def axis_label(metric: str) -> str:
    return f"{metric} ({'lower' if lower_is_better(metric) else 'higher'} is better)"


def pareto_scatter(table: pd.DataFrame, x: str, y: str, paths: list[Path], title: str = "") -> None:
    """Configuration means of ``x`` and ``y`` (std as error bars), front points filled and joined."""
    plt = _pyplot()
    xs, ys = table[x].to_numpy(float), table[y].to_numpy(float)
    front = pareto_front(xs, ys, (not lower_is_better(x), not lower_is_better(y)))
    fig, ax = plt.subplots(figsize=(7.0, 5.0))
    xerr = table[f"{x} std"].to_numpy(float) if f"{x} std" in table else None
    yerr = table[f"{y} std"].to_numpy(float) if f"{y} std" in table else None
    ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="none", ecolor="#999999", elinewidth=0.8, capsize=2)
    ax.scatter(xs[~front], ys[~front], s=40, facecolors="white", edgecolors="#4c72b0", label="dominated")
    ax.scatter(xs[front], ys[front], s=55, color="#c44e52", label="Pareto front", zorder=3)
    order = np.argsort(xs[front])
    ax.plot(xs[front][order], ys[front][order], color="#c44e52", linewidth=1, zorder=2)
    for text, px, py, offset, align in point_labels(list(map(str, table["configuration"])), xs, ys):
        ax.annotate(text, (px, py), textcoords="offset points", xytext=offset, ha=align, fontsize=7)
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(y))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    for path in paths:
        save_figure(fig, path)
    plt.close(fig)


#: a 7-point label character's width as a fraction of the default scatter's x range (about 0.011)
CHAR_WIDTH = 0.011


def point_labels(
    labels: list[str], xs: np.ndarray, ys: np.ndarray
) -> list[tuple[str, float, float, tuple[int, int], str]]:
    """Where to write each point's label: coincident points (within 1% of both axis ranges, e.g. a method
    that ignores a swept key) share one label; a label goes left of its point in the right third of the x
    range, and below (or further off) when it would overlap an earlier label (greedy, in axis fractions)."""
    finite = np.isfinite(xs) & np.isfinite(ys)
    if not finite.any():
        return []
    x_lo, x_hi, y_lo, y_hi = xs[finite].min(), xs[finite].max(), ys[finite].min(), ys[finite].max()
    x_span, y_span = max(x_hi - x_lo, 1e-12), max(y_hi - y_lo, 1e-12)
    merged: dict[int, list[int]] = {}
    for i in np.flatnonzero(finite):
        close = [
            j for j in merged if abs(xs[i] - xs[j]) <= 0.01 * x_span and abs(ys[i] - ys[j]) <= 0.01 * y_span
        ]
        merged.setdefault(close[0] if close else int(i), []).append(int(i))
    placed: list[tuple[float, float, float]] = []  # (left, right, height) of the labels so far
    out = []
    for members in merged.values():
        px, py = float(xs[members[0]]), float(ys[members[0]])
        fx, fy = (px - x_lo) / x_span, (py - y_lo) / y_span
        text = ", ".join(labels[i] for i in members)
        right = fx > 2 / 3
        width = CHAR_WIDTH * len(text)
        left_end, right_end = (fx - width, fx) if right else (fx, fx + width)

        def collides(height: float, lo: float = left_end, hi: float = right_end) -> bool:
            return any(lo < q_hi and q_lo < hi and abs(q_y - height) < 0.05 for q_lo, q_hi, q_y in placed)

        # offsets in points above/below the point, with the label's height in axis fractions
        options = [(4, 0.02), (-10, -0.05), (14, 0.09), (-24, -0.12)]
        dy, height = next(((d, h) for d, h in options if not collides(fy + h)), options[0])
        placed.append((left_end, right_end, fy + height))
        out.append((text, px, py, (-4 if right else 4, dy), "right" if right else "left"))
    return out


def group_utility_bars(groups: pd.DataFrame, k: int, path: Path, title: str = "") -> None:
    """Mean utility@K per item group, one panel per group kind, the mean of the groups dashed."""
    plt = _pyplot()
    kinds = list(dict.fromkeys(groups["kind"]))
    widths = [max(2.5, 0.35 * (groups["kind"] == kind).sum() + 1.5) for kind in kinds]
    fig, axes = plt.subplots(
        1, len(kinds), figsize=(sum(widths), 3.6), squeeze=False, gridspec_kw={"width_ratios": widths}
    )
    for ax, kind in zip(axes[0], kinds, strict=True):
        part = groups[groups["kind"] == kind]
        ax.bar(part["group"].astype(str), part["utility"], color="#4c72b0")
        ax.set_title(f"{kind} groups")
        ax.set_ylabel(f"utility@{k}")
        ax.tick_params(axis="x", labelrotation=60, labelsize=8)
        mean = part["utility"].mean()
        ax.axhline(mean, color="#dd8452", linestyle="--", linewidth=1, label=f"mean {mean:.3f}")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
