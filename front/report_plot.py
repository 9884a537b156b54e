"""The searched front as inline SVG: error against size and against predicted latency.

The HTML report is one self-contained file (no scripts, no fonts or images fetched), so the plot is
SVG written by hand. The points come from the search: every front point's bits and objectives
(``mpqc.pareto``) and, from the search's account (``mpqc.report``), each layer's candidates priced
on the chip. A point's latency is the cost model's: the fixed part of the chosen configuration
(what no layer's bits change) plus each layer's latency at that point's bits; the uniform int8
point is priced the same way, its error the sum of the layers' w8a8 damage, which is how the
search adds damage up.
"""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["FrontPoint", "front_points", "scatter_svg"]

#: Colours of the series (the front, the chosen point, uniform int8): colour-blind-safe pairs.
FRONT_COLOUR = "#1f77b4"
CHOSEN_COLOUR = "#d62728"
INT8_COLOUR = "#333333"
_UNIFORM = "w8a8"


@dataclasses.dataclass(frozen=True)
class FrontPoint:
    """One configuration on the plots: its error and its predicted size (bytes) and latency (s)."""

    error: float
    size: float
    latency: float


def front_points(
    explanation: Any, pareto: Mapping[str, Any] | None
) -> tuple[list[FrontPoint], FrontPoint | None, FrontPoint | None]:
    """(front, chosen, uniform int8) of a searched compilation; empty without a front."""
    if not pareto or not pareto.get("points") or not explanation.rows:
        return [], None, None
    prices = {
        row.layer: {c.pair: c for c in row.candidates} for row in explanation.rows if row.candidates
    }
    chosen_index = int(pareto.get("chosen", 0))
    chosen_bits = pareto["points"][chosen_index]["bits"]

    def total(bits: Mapping[str, str], field: str) -> float | None:
        values = [getattr(prices[layer].get(pair), field, None) for layer, pair in bits.items()]
        return None if None in values or any(layer not in prices for layer in bits) else sum(values)

    fixed = {}
    for field, objective in (("latency_s", "latency"), ("size", "size")):
        chosen_total = total(chosen_bits, field)
        predicted = explanation.predicted.get(objective)
        fixed[field] = (
            None if chosen_total is None or predicted is None else predicted - chosen_total
        )

    def point(bits: Mapping[str, str], objectives: Mapping[str, float]) -> FrontPoint | None:
        latency = total(bits, "latency_s")
        size = objectives.get("size")
        if size is None:
            layers_size = total(bits, "size")
            size = None if layers_size is None else layers_size + (fixed["size"] or 0.0)
        error = objectives.get("error")
        if error is None:
            error = total(bits, "damage")
        if latency is None or size is None or error is None or fixed["latency_s"] is None:
            return None
        return FrontPoint(float(error), float(size), latency + fixed["latency_s"])

    front = [p for p in (point(q["bits"], q["objectives"]) for q in pareto["points"]) if p]
    chosen = point(chosen_bits, pareto["points"][chosen_index]["objectives"])
    uniform = {layer: _UNIFORM for layer in chosen_bits}
    int8 = point(uniform, {}) if all(_UNIFORM in prices.get(n, {}) for n in uniform) else None
    return front, chosen, int8


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]."""
    if high <= low:
        high = low + (abs(low) or 1.0)
    step = 10 ** math.floor(math.log10((high - low) / count))
    for multiple in (1, 2, 2.5, 5, 10):
        if (high - low) / (step * multiple) <= count:
            step *= multiple
            break
    first, last = math.floor(low / step), math.ceil(high / step)
    return [round(index * step, 12) for index in range(first, last + 1)]


def _format(value: float) -> str:
    return f"{value:.3g}"


def scatter_svg(
    front: Sequence[FrontPoint],
    chosen: FrontPoint | None,
    int8: FrontPoint | None,
    x_field: str,
    x_label: str,
    x_scale: float,
    budget: float | None = None,
    staircase: bool = False,
    width: int = 460,
    height: int = 300,
) -> str:
    """One scatter plot, error (y) against ``x_field`` of the points (x, divided by ``x_scale``
    for display): the front's points (joined when ``staircase``: x is the objective they are a
    front in), the chosen point and the int8 point marked."""
    every = [*front, *(p for p in (chosen, int8) if p is not None)]
    xs = [getattr(p, x_field) / x_scale for p in every]
    ys = [p.error for p in every]
    if budget is not None:
        xs.append(budget / x_scale)
    left, right, top, bottom = 64, 16, 16, 44
    x_ticks = _nice_ticks(min(xs) * 0.95, max(xs) * 1.05)
    y_ticks = _nice_ticks(0.0, max(ys) * 1.08)
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(value: float) -> float:
        return left + (value - x0) / ((x1 - x0) or 1.0) * plot_w

    def sy(value: float) -> float:
        return top + plot_h - (value - y0) / ((y1 - y0) or 1.0) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="error against {x_label}">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" '
        'stroke="#999"/>',
    ]
    for tick in x_ticks:
        parts.append(
            f'<line x1="{sx(tick):.1f}" y1="{top}" x2="{sx(tick):.1f}" y2="{top + plot_h}" '
            'stroke="#e4e4e4"/>'
            f'<text x="{sx(tick):.1f}" y="{top + plot_h + 16}" text-anchor="middle">'
            f"{_format(tick)}</text>"
        )
    for tick in y_ticks:
        parts.append(
            f'<line x1="{left}" y1="{sy(tick):.1f}" x2="{left + plot_w}" y2="{sy(tick):.1f}" '
            'stroke="#e4e4e4"/>'
            f'<text x="{left - 6}" y="{sy(tick) + 4:.1f}" text-anchor="end">{_format(tick)}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">'
        f"{html.escape(x_label)}</text>"
        f'<text transform="translate(14 {top + plot_h / 2:.1f}) rotate(-90)" '
        'text-anchor="middle">error</text>'
    )
    if budget is not None:
        bx = sx(budget / x_scale)
        parts.append(
            f'<line x1="{bx:.1f}" y1="{top}" x2="{bx:.1f}" y2="{top + plot_h}" stroke="#888" '
            f'stroke-dasharray="5 4"/><text x="{bx - 4:.1f}" y="{top + 14}" text-anchor="end" '
            'fill="#666">budget</text>'
        )
    ordered = sorted(front, key=lambda p: getattr(p, x_field))
    if staircase and len(ordered) > 1:
        corners = []
        for before, after in zip(ordered, ordered[1:], strict=False):
            corners.append((getattr(after, x_field), before.error))
        steps = [(getattr(ordered[0], x_field), ordered[0].error)]
        for corner, p in zip(corners, ordered[1:], strict=True):
            steps += [corner, (getattr(p, x_field), p.error)]
        path = " ".join(
            f"{'M' if i == 0 else 'L'}{sx(x / x_scale):.1f},{sy(y):.1f}"
            for i, (x, y) in enumerate(steps)
        )
        parts.append(f'<path d="{path}" fill="none" stroke="{FRONT_COLOUR}" stroke-opacity="0.5"/>')
    for p in ordered:
        parts.append(
            f'<circle cx="{sx(getattr(p, x_field) / x_scale):.1f}" cy="{sy(p.error):.1f}" r="4.5" '
            f'fill="{FRONT_COLOUR}"/>'
        )
    if int8 is not None:
        x, y = sx(getattr(int8, x_field) / x_scale), sy(int8.error)
        parts.append(
            f'<rect x="{x - 5:.1f}" y="{y - 5:.1f}" width="10" height="10" fill="none" '
            f'stroke="{INT8_COLOUR}" stroke-width="2"/>'
        )
    if chosen is not None:
        x, y = sx(getattr(chosen, x_field) / x_scale), sy(chosen.error)
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="7" fill="{CHOSEN_COLOUR}" stroke="white" '
            'stroke-width="1.5"/>'
        )
    parts.append("</svg>")
    return "".join(parts)


LEGEND = (
    f'<p class="legend"><span style="color:{FRONT_COLOUR}">●</span> searched front '
    f'<span style="color:{CHOSEN_COLOUR}">●</span> chosen '
    f'<span style="color:{INT8_COLOUR}">□</span> uniform w8a8 '
    '<span style="color:#888">┆</span> budget</p>'
)
