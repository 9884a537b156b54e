"""Why every layer got its bits: the per-layer explanation behind ``--report`` and ``--report-json``.

A mixed-precision result is only trusted when the user can see why a layer stayed at higher
precision. The evidence exists only between the search and the lowering: ``lower-qdq`` invalidates
the cost and sensitivity annotations (they describe the float model), so an instrument,
:class:`Explainer`, reads the search's own problem right after ``search`` ran — the same candidates,
damage scores, costs and resolved budget the strategy saw — and :func:`explain` joins it with the
final bits and the layers other passes left float.

A layer not at its cheapest candidate gets one reason:

- ``pinned (first/last compute layer)``: the search holds them at 8 bits (HAQ, HAWQ-V3);
- ``kept: ...``: the next cheaper candidate's extra damage per byte saved, against the cut-off —
  the costliest damage per byte among the drops the search did take. A layer above the cut-off is
  one a budget-greedy search would also keep; one below it was kept by the strategy's own
  trade-off (a knapsack's granularity, an exact evaluation that disagreed with the proxy);
- ``spec has no cheaper pair``: it is at its own cheapest candidate, but other layers could go lower;
- left float (no quantized form, inside a ``Loop`` body, ...): ``lower-qdq`` lists ``{layer, reason}``
  entries under ``left_float`` in its section of the ``mpqc.report`` annotation, copied here as
  they are.
"""

from __future__ import annotations

import dataclasses
import html
import pathlib
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from mpqc.core.bits import FLOAT_BITS
from mpqc.core.errors import MpqcError
from mpqc.ir import annotations

__all__ = [
    "Candidate",
    "Explainer",
    "Explanation",
    "LayerRow",
    "ReportFormatError",
    "check_format",
    "explain",
    "write_report",
]

PINNED = "pinned (first/last compute layer)"


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
    #: the cost model's totals of the chosen configuration (fixed part included)
    predicted: Mapping[str, float] = dataclasses.field(default_factory=dict)

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
        kinds = Counter(_kind(row.reason) for row in kept)
        return f"{len(kept)} of {len(self.rows)} layers: " + ", ".join(
            f"{n} {kind}" for kind, n in kinds.most_common()
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


def _kind(reason: str) -> str:
    """The short group a reason belongs to in the summary line."""
    if reason == PINNED:
        return "pinned"
    if reason.startswith("kept"):
        return "kept by the search"
    if reason.startswith("spec has no cheaper pair"):
        return "with no cheaper pair"
    return "left float"


@dataclasses.dataclass(frozen=True)
class _Searched:
    """What the search saw, read right after it ran."""

    names: tuple[str, ...]
    ops: tuple[str, ...]
    choices: tuple[tuple[tuple[int, int], ...], ...]
    #: per layer, the index of the candidate the search chose
    config: tuple[int, ...]
    damage: tuple[np.ndarray, ...]
    costs: Mapping[str, tuple[np.ndarray, ...]]
    fixed: Mapping[str, float]
    constraints: Mapping[str, float]
    pinned: frozenset[str]
    strategy: str
    metric: str


class Explainer:
    """Instrument: keeps the search's problem, which later passes' annotations no longer hold."""

    def __init__(self) -> None:
        self.searched: _Searched | None = None

    def run_before_pass(self, pass_: ir.passes.PassBase, model: ir.Model) -> None:
        pass

    def run_after_pass(
        self, pass_: ir.passes.PassBase, model: ir.Model, result: ir.passes.PassResult
    ) -> None:
        if getattr(pass_, "name", None) != "search":
            return
        layers = pass_.searched_layers(result.model)
        problem = pass_.problem(result.model, layers)
        pinned = pass_.pinned(layers)
        chosen = [annotations.BITS.get(layer.node) or {} for layer in layers]
        self.searched = _Searched(
            names=problem.layers,
            ops=tuple(layer.node.op_type for layer in layers),
            choices=problem.choices,
            config=tuple(
                choices.index((bits["w"], bits["a"]))
                for choices, bits in zip(problem.choices, chosen)
            ),
            damage=problem.sensitivity,
            costs=problem.costs,
            fixed=problem.fixed_costs,
            constraints=problem.constraints,
            pinned=frozenset(layers[i].name for i in pinned),
            strategy=pass_.options.strategy,
            metric=pass_.options.metric,
        )


def final_bits(model: ir.Model) -> dict[str, tuple[str, str]]:
    """Layer name -> (op, 'wXaY' or 'float') from the ``mpqc.bits`` of the emitted model's nodes, bodies included."""
    bits = {}
    for node in (node for graph in (model.graph, *model.graph.subgraphs()) for node in graph):
        chosen = annotations.BITS.get(node)
        if chosen is not None:
            w, a = int(chosen["w"]), int(chosen["a"])
            bits[node.name or node.outputs[0].name] = (
                node.op_type,
                "float" if w == FLOAT_BITS and a == FLOAT_BITS else f"w{w}a{a}",
            )
    return bits


def left_float(report: Mapping[str, Any]) -> list[dict[str, str]]:
    """The ``{layer, reason}`` entries ``lower-qdq`` lists in its ``mpqc.report`` section."""
    return list((report.get("lower-qdq") or {}).get("left_float") or [])


def explain(model: ir.Model, searched: _Searched | None, report: Mapping[str, Any]) -> Explanation:
    """The per-layer table of the emitted ``model``; ``searched`` is the Explainer's record (None without search)."""
    extra = [
        LayerRow(str(e["layer"]), str(e.get("op", "")), "float", reason=str(e["reason"]))
        for e in left_float(report)
    ]
    if searched is None:
        rows = [LayerRow(name, op, chosen) for name, (op, chosen) in final_bits(model).items()]
        return Explanation(tuple(rows + extra))
    objective = next(iter(searched.constraints), "size")
    cost = searched.costs[objective]
    config = searched.config
    cutoff = _cutoff(searched.damage, cost, config)
    cheapest_bits = min(w * a for choices in searched.choices for w, a in choices)
    rows = []
    for i, name in enumerate(searched.names):
        choices, damage, k = searched.choices[i], searched.damage[i], config[i]
        candidates = tuple(
            Candidate(
                f"w{w}a{a}",
                float(damage[j]),
                float(searched.costs["size"][i][j]),
                float(searched.costs["latency"][i][j]),
            )
            for j, (w, a) in enumerate(choices)
        )
        reason = None
        w, a = choices[k]
        if name in searched.pinned and w * a > cheapest_bits:
            reason = PINNED
        elif cost[i][k] > cost[i].min():
            reason = _kept_reason(
                choices, damage, cost[i], k, cutoff, objective, bool(searched.constraints)
            )
        elif w * a > cheapest_bits:
            reason = (
                "spec has no cheaper pair for this layer (candidates: "
                + ", ".join(c.pair for c in candidates)
                + ")"
            )
        rows.append(LayerRow(name, searched.ops[i], f"w{w}a{a}", candidates, reason))
    predicted = {
        obj: float(
            sum(cost_[i][config[i]] for i in range(len(config))) + searched.fixed.get(obj, 0.0)
        )
        for obj, cost_ in searched.costs.items()
    }
    return Explanation(
        tuple(rows + extra),
        searched.strategy,
        searched.metric,
        objective,
        searched.constraints.get(objective),
        cutoff,
        predicted,
    )


def _step_down(cost: np.ndarray, k: int) -> int | None:
    """The next cheaper candidate than ``k`` (the most expensive of those cheaper), or None."""
    cheaper = [j for j in range(len(cost)) if cost[j] < cost[k]]
    return max(cheaper, key=lambda j: cost[j]) if cheaper else None


def _cutoff(
    damage: Sequence[np.ndarray], cost: Sequence[np.ndarray], config: Sequence[int]
) -> float | None:
    """The largest damage per unit saved among the steps the search took below a layer's dearest pair."""
    ratios = []
    for d, c, k in zip(damage, cost, config):
        dearer = [j for j in range(len(c)) if c[j] > c[k]]
        if dearer:
            up = min(dearer, key=lambda j: c[j])
            ratios.append((d[k] - d[up]) / (c[up] - c[k]))
    return float(max(ratios)) if ratios else None


_UNITS = {
    "size": (1e3, "kB"),
    "latency": (1e-3, "ms"),
    "energy": (1e-3, "mJ"),
    "bops": (1e9, "GBOPs"),
}


def _kept_reason(
    choices,
    damage: np.ndarray,
    cost: np.ndarray,
    k: int,
    cutoff: float | None,
    objective: str,
    budgeted: bool,
) -> str:
    j = _step_down(cost, k)
    assert j is not None  # the caller checked that a cheaper candidate exists
    scale, unit = _UNITS.get(objective, (1.0, objective))
    added, saved = float(damage[j] - damage[k]), float(cost[k] - cost[j])
    ratio = added / saved * scale
    text = f"kept: w{choices[j][0]}a{choices[j][1]} would add {added:+.3g} damage to save {saved / scale:.3g} {unit} ({ratio:.3g}/{unit}"
    if cutoff is not None and ratio >= cutoff * scale:
        text += f", above the costliest drop taken, {cutoff * scale:.3g}/{unit})"
    elif cutoff is not None:
        text += f", below the costliest drop taken, {cutoff * scale:.3g}/{unit}: the search saved the {unit} elsewhere)"
    else:
        text += ")"
    return text + ("; the budget was met without it" if budgeted else "; no budget asked for it")


# --- Writing ---------------------------------------------------------------------------------


def _candidate_text(candidate: Candidate) -> str:
    return f"{candidate.pair}: {candidate.damage:.3g} · {candidate.size / 1e3:.1f} kB · {candidate.latency_s * 1e3:.3f} ms"


def _header(explanation: Explanation, title: str) -> list[str]:
    lines = [title, f"Kept above the cheapest bits: {explanation.summary()}."]
    if explanation.strategy:
        scale, unit = _UNITS.get(explanation.objective, (1.0, explanation.objective))
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
            f"Search: {explanation.strategy} on mpqc.sens.{explanation.metric}; {explanation.objective} "
            f"{budget}; costliest drop taken {cutoff}."
        )
        lines.append(
            "Predicted: "
            + ", ".join(f"{k} {v:.6g}" for k, v in sorted(explanation.predicted.items()))
            + "."
        )
    return lines


def markdown(explanation: Explanation, title: str = "mpqc report") -> str:
    head = _header(explanation, title)
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
        candidates = "<br>".join(_candidate_text(c) for c in row.candidates)
        cells = [row.layer, row.op, row.chosen, candidates, row.reason or ""]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def html_page(explanation: Explanation, title: str = "mpqc report") -> str:
    head = _header(explanation, title)
    body = [
        f"<h1>{html.escape(head[0])}</h1>",
        *(f"<p>{html.escape(line)}</p>" for line in head[1:]),
        "<table><tr><th>layer</th><th>op</th><th>chosen</th><th>candidates (damage · size · latency)</th>"
        "<th>why not cheaper</th></tr>",
    ]
    for row in explanation.rows:
        candidates = "<br>".join(html.escape(_candidate_text(c)) for c in row.candidates)
        style = ' class="kept"' if row.reason else ""
        body.append(
            f"<tr{style}><td>{html.escape(row.layer)}</td><td>{html.escape(row.op)}</td>"
            f"<td>{html.escape(row.chosen)}</td><td>{candidates}</td><td>{html.escape(row.reason or '')}</td></tr>"
        )
    body.append("</table>")
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}tr.kept{background:#fff6d5}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


_FORMATS = {".html": html_page, ".htm": html_page, ".md": markdown}


def check_format(path: str | pathlib.Path) -> None:
    """Raise ReportFormatError unless ``path`` names a format :func:`write_report` writes."""
    if pathlib.Path(path).suffix.lower() not in _FORMATS:
        raise ReportFormatError(f"--report {path}: name a .html or .md file")


def write_report(
    explanation: Explanation, path: str | pathlib.Path, title: str = "mpqc report"
) -> pathlib.Path:
    """Write the table as HTML (``.html``/``.htm``) or markdown (``.md``)."""
    check_format(path)
    path = pathlib.Path(path)
    path.write_text(_FORMATS[path.suffix.lower()](explanation, title))
    return path
