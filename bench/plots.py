"""Pareto plots of one model's suite: task metric against size, predicted and measured latency.

One PNG per model with three panels. Baselines (float, onnxruntime's recipes, mpqc uniform w8a8) are
labelled points; mpqc's search rows are coloured by strategy, circles without ``recover`` and
triangles with it, and the upper-left envelope of every mpqc point (the front a user can pick from)
is drawn as a step line. The predicted-latency panel holds only what the cost model priced: float
and mpqc's rows (onnxruntime's graphs are not mpqc's to price).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

STRATEGY_COLORS = {
    "ilp": "tab:blue",
    "greedy": "tab:orange",
    "eagl": "tab:green",
    "nsga2": "tab:red",
    "mohaq": "tab:purple",
    "nemo": "tab:brown",
    "haq": "tab:pink",
    "hago": "tab:olive",
    "ompq": "tab:cyan",
}

Axis = Callable[[dict[str, Any]], float | None]


def _predicted_ms(row: dict[str, Any]) -> float | None:
    predicted = row.get("predicted")
    return None if not predicted else predicted["latency_s"] * 1e3


AXES: tuple[tuple[str, Axis], ...] = (
    ("file size (MB)", lambda row: row.get("size_mb")),
    ("predicted latency (ms, cost model)", _predicted_ms),
    ("measured latency vs float (1 thread)", lambda row: row.get("latency_vs_float_1t")),
)


def _front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (smaller x, larger y), sorted by x."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def plot_model(name: str, entry: dict[str, Any], path: Path) -> Path:
    """Write ``path`` (PNG) for one model's results entry."""
    metric = entry["metric_names"][0]
    rows = [row for row in entry["rows"] if "error" not in row]
    fig, axes = plt.subplots(1, len(AXES), figsize=(5.2 * len(AXES), 4.4), constrained_layout=True)
    for ax, (label, x_of) in zip(axes, AXES, strict=True):
        mpqc_points = []
        for row in rows:
            x, y = x_of(row), row["metrics"].get(metric)
            if x is None or y is None:
                continue
            if "strategy" in row:
                marker = "^" if row.get("recover") else "o"
                ax.scatter(
                    x,
                    y,
                    s=28,
                    marker=marker,
                    color=STRATEGY_COLORS.get(row["strategy"], "gray"),
                    alpha=0.8,
                    label=f"{row['strategy']}{' +recover' if row.get('recover') else ''}",
                )
                mpqc_points.append((x, y))
                continue
            if row["recipe"].startswith("mpqc"):
                mpqc_points.append((x, y))
            style = {"float": ("*", "gold", 140)}.get(
                row["recipe"],
                (
                    "D" if row["recipe"].startswith("mpqc") else "s",
                    "black" if row["recipe"].startswith("mpqc") else "dimgray",
                    36,
                ),
            )
            ax.scatter(
                x,
                y,
                marker=style[0],
                color=style[1],
                s=style[2],
                edgecolors="black",
                linewidths=0.5,
                zorder=3,
            )
            ax.annotate(
                row["recipe"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7
            )
        if len(mpqc_points) > 1:
            front = _front(mpqc_points)
            ax.step(
                [p[0] for p in front],
                [p[1] for p in front],
                where="post",
                color="black",
                linewidth=0.8,
                alpha=0.5,
                label="mpqc front",
            )
        ax.set_xlabel(label)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    if unique:
        fig.legend(
            unique.values(),
            unique.keys(),
            loc="outside lower center",
            ncol=min(len(unique), 8),
            fontsize=7,
        )
    fig.suptitle(f"{name}: {entry['description']}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
    return path
