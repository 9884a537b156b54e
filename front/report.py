"""Why every layer got its bits, rendered: the table behind ``--report`` and ``--report-json``.

The account is not computed here. The search pass writes why each searched layer got its bits —
its candidates, their damage and cost, and why it is not cheaper — into its section of
``mpqc.report`` (``passes/choose/explain.py``), and ``lower-qdq`` lists the weighted ops it left
float (no quantized form) under ``left_float`` and the layers whose input it left float (inside an
If branch or Loop body the calibration data never reached) under ``weights_only``, in its own
section. This module reads them back into an :class:`Explanation` and renders it as markdown or
HTML, with the sections ``report_runtime`` words: what onnxruntime runs (``verify``'s section) and,
with ``--measure``, the measured latency.
"""

from __future__ import annotations

import dataclasses
import html
import pathlib
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import onnx_ir as ir

from mpqc.core.bits import FLOAT_BITS
from mpqc.core.errors import MpqcError
from mpqc.ir import annotations
from mpqc.ir.layers import scoped_nodes
from mpqc.measure import Measurement
from mpqc.report_plot import LEGEND, front_points, scatter_svg
from mpqc.report_runtime import kernels_html, kernels_markdown, measured_html, measured_markdown

__all__ = [
    "Candidate",
    "Explanation",
    "LayerRow",
    "ReportFormatError",
    "check_format",
    "render",
    "write_report",
]

#: The summary's group of a layer ``lower-qdq`` left float.
LEFT_FLOAT = "left float"
#: The summary's group of a layer whose input ``lower-qdq`` left float (weights quantized).
WEIGHTS_ONLY = "weights only"


class ReportFormatError(MpqcError):
    """``--report`` names a file whose format mpqc cannot write."""


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One (weight, activation) pair a layer could take, as the search priced it."""

    pair: str
    damage: float
    size: float
    latency_s: float


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One layer: what it got, what it could have had, and why it is not cheaper (None: it is)."""

    layer: str
    op: str
    chosen: str
    candidates: tuple[Candidate, ...] = ()
    reason: str | None = None
    #: the group the summary counts the reason in ("pinned", "kept by the search", ...)
    kind: str | None = None


@dataclasses.dataclass(frozen=True)
class Explanation:
    """The per-layer table of one compilation, and what the search worked against."""

    rows: tuple[LayerRow, ...]
    strategy: str | None = None
    metric: str | None = None
    #: the budgeted objective the "cheapest" candidate and the ratios are measured in
    objective: str = "size"
    budget: float | None = None
    #: the costliest damage per unit of ``objective`` among the drops the search took
    cutoff: float | None = None
    #: how ``objective`` is shown: one ``unit`` is ``scale`` of its base unit (kB: 1e3 bytes)
    unit: str = "kB"
    scale: float = 1e3
    #: the cost model's totals of the chosen configuration (fixed part included)
    predicted: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, model: ir.Model, report: Mapping[str, Any]) -> Explanation:
        """The table of the emitted ``model`` from its ``mpqc.report``: the search's rows, or
        the final bits when nothing was searched, then the layers lower-qdq left float."""
        left = tuple(
            LayerRow(
                str(e["layer"]), str(e.get("op", "")), "float", (), str(e["reason"]), LEFT_FLOAT
            )
            for e in (report.get("lower-qdq") or {}).get("left_float") or []
        )
        lowered = report.get("lower-qdq") or {}
        unranged = {str(e["layer"]): str(e["reason"]) for e in lowered.get("weights_only") or []}
        final = final_bits(model)
        searched = report.get("search")
        if searched is None:
            rows = tuple(
                LayerRow(
                    name,
                    op,
                    chosen,
                    reason=unranged.get(name),
                    kind=WEIGHTS_ONLY if name in unranged else None,
                )
                for name, (op, chosen) in final.items()
            )
            return cls(rows + left)
        rows = tuple(
            LayerRow(
                row["layer"],
                row["op"],
                final[row["layer"]][1] if row["layer"] in unranged else row["chosen"],
                tuple(Candidate(**candidate) for candidate in row["candidates"]),
                unranged.get(row["layer"], row["reason"]),
                WEIGHTS_ONLY if row["layer"] in unranged else row["kind"],
            )
            for row in searched["layers"]
        )
        return cls(
            rows + left,
            searched["strategy"],
            searched["metric"],
            searched["objective"],
            searched["budget"],
            searched["cutoff"],
            searched["unit"],
            searched["scale"],
            searched["predicted"],
        )

    def kept(self) -> list[LayerRow]:
        return [row for row in self.rows if row.reason is not None]

    def summary(self) -> str:
        """One line: how many layers sit above their cheapest bits, grouped by reason."""
        kept = self.kept()
        if not self.strategy:
            return f"{len(self.rows)} layers at the requested bits" + (
                f"; {len(kept)} left float" if kept else ""
            )
        if not kept:
            return f"none of {len(self.rows)} layers: every layer at its cheapest candidate"
        kinds = Counter(row.kind for row in kept)
        return f"{len(kept)} of {len(self.rows)} layers: " + ", ".join(
            f"{n} {kind} ({_names([row.layer for row in kept if row.kind == kind])})"
            for kind, n in kinds.most_common()
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "metric": self.metric,
            "objective": self.objective,
            "budget": self.budget,
            "cutoff": self.cutoff,
            "predicted": dict(self.predicted),
            "summary": self.summary(),
            "layers": [dataclasses.asdict(row) for row in self.rows],
        }


#: Layers a summary names per group; the rest are counted (the report lists them all).
NAMED = 4


def _names(layers: list[str]) -> str:
    shown = ", ".join(layers[:NAMED])
    return shown + (f" and {len(layers) - NAMED} more" if len(layers) > NAMED else "")


def final_bits(model: ir.Model) -> dict[str, tuple[str, str]]:
    """Layer name -> (op, 'wXaY' or 'float') from the ``mpqc.bits`` of the emitted model's nodes,
    bodies included."""
    bits = {}
    for name, node in scoped_nodes(model.graph):
        chosen = annotations.BITS.get(node)
        if chosen is not None:
            pair = annotations.chosen_bits(chosen)
            float_ = pair == (FLOAT_BITS, FLOAT_BITS)
            bits[name] = (
                node.op_type,
                "float" if float_ else str(pair),
            )
    return bits


# --- Writing ---------------------------------------------------------------------------------


def _candidate_text(candidate: Candidate) -> str:
    return (
        f"{candidate.pair}: {candidate.damage:.3g} · {candidate.size / 1e3:.1f} kB · "
        f"{candidate.latency_s * 1e3:.3f} ms"
    )


def _header(explanation: Explanation, title: str) -> list[str]:
    lines = [title, f"Kept above the cheapest bits: {explanation.summary()}."]
    if explanation.strategy:
        scale, unit = explanation.scale, explanation.unit
        budget = (
            "no budget"
            if explanation.budget is None
            else f"≤ {explanation.budget / scale:.6g} {unit}"
        )
        cutoff = (
            "none"
            if explanation.cutoff is None
            else f"{explanation.cutoff * scale:.3g} damage/{unit}"
        )
        lines.append(
            f"Search: {explanation.strategy} on mpqc.sens.{explanation.metric}; "
            f"{explanation.objective} {budget}; costliest drop taken {cutoff}."
        )
        lines.append(
            "Predicted: "
            + ", ".join(_quantity(k, v) for k, v in sorted(explanation.predicted.items()))
            + "."
        )
    return lines


def _markdown_text(text: str) -> str:
    """``text`` as markdown shows it literally, on one line: names and titles are the model
    author's text, and raw HTML in them would run in a viewer, a newline would end the table row and
    a ``|`` would open a new cell."""
    escaped = html.escape(text, quote=False).replace("|", "\\|")
    return "<br>".join(escaped.splitlines())


#: How each predicted total is shown: (unit, how many base units one is).
_UNITS = {
    "size": ("kB", 1e3),
    "latency": ("ms", 1e-3),
    "energy": ("µJ", 1e-6),
    "bops": ("MBOPs", 1e6),
}


def _quantity(name: str, value: float) -> str:
    unit, scale = _UNITS.get(name, ("", 1.0))
    return f"{name} {value / scale:.4g} {unit}".rstrip()


def markdown(
    explanation: Explanation,
    title: str = "mpqc report",
    kernels: Mapping[str, Any] | None = None,
    measurement: Measurement | None = None,
) -> str:
    head = [_markdown_text(line) for line in _header(explanation, title)]
    lines = [
        f"# {head[0]}",
        "",
        *head[1:],
        "",
        "Candidates: damage score · stored size · predicted latency.",
        "",
        "| layer | op | chosen | candidates | why not cheaper |",
        "|---|---|---|---|---|",
    ]
    for row in explanation.rows:
        candidates = "<br>".join(_markdown_text(_candidate_text(c)) for c in row.candidates)
        cells = [_markdown_text(text) for text in (row.layer, row.op, row.chosen)]
        cells += [candidates, _markdown_text(row.reason or "")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += kernels_markdown(kernels) + measured_markdown(measurement)
    return "\n".join(lines) + "\n"


def _front_section(explanation: Explanation, pareto: Mapping[str, Any] | None) -> list[str]:
    """The two plots of the searched front (nothing when nothing was searched)."""
    front, chosen, int8 = front_points(explanation, pareto)
    if not front:
        return []
    budget = explanation.budget
    plots = [
        scatter_svg(
            front,
            chosen,
            int8,
            "size",
            "predicted size (kB)",
            1e3,
            budget if explanation.objective == "size" else None,
            staircase=True,
        ),
        scatter_svg(
            front,
            chosen,
            int8,
            "latency",
            "predicted latency (ms)",
            1e-3,
            budget if explanation.objective == "latency" else None,
        ),
    ]
    return [
        "<h2>Searched front</h2>",
        f"<p>{len(front)} configurations the {html.escape(str(explanation.strategy))} search "
        "found, none better in both error and size; error is its damage score "
        f"(mpqc.sens.{html.escape(str(explanation.metric))}, summed over layers), latency the "
        "cost model's prediction for the chip.</p>",
        f'<div class="plots">{"".join(plots)}</div>',
        LEGEND,
    ]


def _timing_section(timing: Sequence[tuple[str, float]]) -> list[str]:
    if not timing:
        return []
    total = sum(seconds for _, seconds in timing) or 1.0
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td class=num>{seconds:.3f} s</td>"
        f"<td class=num>{100 * seconds / total:.0f} %</td></tr>"
        for name, seconds in timing
    )
    return [
        "<h2>Pass timings</h2>",
        f"<table><tr><th>pass</th><th>time</th><th>share</th></tr>{rows}</table>",
    ]


def html_page(
    explanation: Explanation,
    title: str = "mpqc report",
    pareto: Mapping[str, Any] | None = None,
    timing: Sequence[tuple[str, float]] = (),
    kernels: Mapping[str, Any] | None = None,
    measurement: Measurement | None = None,
) -> str:
    """One self-contained page: the front's plots, the per-layer table, what onnxruntime runs,
    the measured latency, the pass timings."""
    head = _header(explanation, title)
    body = [
        f"<h1>{html.escape(head[0])}</h1>",
        *(f"<p>{html.escape(line)}</p>" for line in head[1:]),
        *_front_section(explanation, pareto),
        "<h2>Layers</h2>",
        "<table><tr><th>layer</th><th>op</th><th>chosen</th>"
        "<th>candidates (damage · size · latency)</th>"
        "<th>why not cheaper</th></tr>",
    ]
    for row in explanation.rows:
        candidates = "<br>".join(html.escape(_candidate_text(c)) for c in row.candidates)
        style = ' class="kept"' if row.reason else ""
        body.append(
            f"<tr{style}><td>{html.escape(row.layer)}</td><td>{html.escape(row.op)}</td>"
            f"<td>{html.escape(row.chosen)}</td><td class=candidates>{candidates}</td>"
            f"<td>{html.escape(row.reason or '')}</td></tr>"
        )
    body.append("</table>")
    body += kernels_html(kernels) + measured_html(measurement)
    body += _timing_section(timing)
    style = (
        "body{font-family:'DejaVu Sans',Arial,sans-serif;margin:24px 32px;color:#222;"
        "max-width:1100px}h1{font-size:22px;margin:0 0 8px}h2{font-size:17px;margin:22px 0 6px}"
        "p{margin:4px 0;font-size:14px}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}"
        "th{background:#f0f0f0}td.num{text-align:right}td.candidates{white-space:nowrap}"
        "tr.kept{background:#fff6d5}tr.warn{background:#fde2e1}p.warning{color:#a11}"
        ".plots{display:flex;flex-wrap:wrap;gap:16px}"
        "svg{font-size:11px;font-family:inherit;background:white}.legend{color:#444}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


_FORMATS = (".html", ".htm", ".md")


def check_format(path: str | pathlib.Path) -> None:
    """Raise ReportFormatError unless ``path`` names a format :func:`write_report` writes."""
    if pathlib.Path(path).suffix.lower() not in _FORMATS:
        raise ReportFormatError(f"{path}: name a .html or .md file", field="report")


def render(
    explanation: Explanation,
    path: str | pathlib.Path,
    title: str = "mpqc report",
    pareto: Mapping[str, Any] | None = None,
    timing: Sequence[tuple[str, float]] = (),
    kernels: Mapping[str, Any] | None = None,
    measurement: Measurement | None = None,
) -> str:
    """The report as the file ``path`` holds it: HTML (``.html``/``.htm``: with the front's plots
    and the pass timings) or markdown (``.md``: the tables); both with what onnxruntime runs
    (``kernels``, verify's section) and the measured latency (``measurement``) when given."""
    check_format(path)
    if pathlib.Path(path).suffix.lower() == ".md":
        return markdown(explanation, title, kernels, measurement)
    return html_page(explanation, title, pareto, timing, kernels, measurement)


def write_report(
    explanation: Explanation,
    path: str | pathlib.Path,
    title: str = "mpqc report",
    pareto: Mapping[str, Any] | None = None,
    timing: Sequence[tuple[str, float]] = (),
    kernels: Mapping[str, Any] | None = None,
    measurement: Measurement | None = None,
) -> pathlib.Path:
    """Write :func:`render`'s text to ``path``."""
    path = pathlib.Path(path)
    path.write_text(render(explanation, path, title, pareto, timing, kernels, measurement))
    return path
