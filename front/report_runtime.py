"""What onnxruntime runs and how fast, rendered: the report's runtime sections and summary lines.

Two facts about the emitted model that the cost model only predicts: the kernel onnxruntime runs
for each quantized layer once it has fused the Q/DQ patterns (``verify``'s ``kernels`` section,
``passes/verify/kernels.py``), and, with ``--measure``, the model's latency on this machine against
float and uniform w8a8 (``mpqc.measure``). The printed summary, the markdown and the HTML report
all word them here.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Mapping
from typing import Any

from mpqc.measure import Measurement
from mpqc.passes.lib.plan import Kernel

__all__ = [
    "kernel_summary",
    "kernels_html",
    "kernels_markdown",
    "measured_html",
    "measured_markdown",
    "measured_lines",
    "measured_rows",
    "speedup_summary",
]

#: The kind of a layer that runs a float kernel behind its weight's DequantizeLinear.
_FLOAT_KIND = Kernel.DEQUANTIZE_FLOAT.value
#: Kinds that are not a quantized kernel (None: the layer was not found in onnxruntime's graph).
_NOT_QUANTIZED = (None, _FLOAT_KIND, Kernel.FLOAT.value)


def kernel_summary(kernels: Mapping[str, Any]) -> str:
    """One line: how many quantized layers run which onnxruntime kernel, and the warnings."""
    layers = kernels.get("layers", [])
    quantized = Counter(row["runs"] for row in layers if row["kernel"] not in _NOT_QUANTIZED)
    in_float = sum(row["kernel"] == _FLOAT_KIND for row in layers)
    parts = [
        f"{sum(quantized.values())} of {len(layers)} quantized layers run as quantized kernels"
        + (
            " (" + ", ".join(f"{n} {op}" for op, n in sorted(quantized.items())) + ")"
            if quantized
            else ""
        )
    ]
    if in_float:
        parts.append(f"{in_float} as DequantizeLinear + float")
    warnings = len(kernels.get("warnings", []))
    if warnings:
        parts.append(f"{warnings} warning{'s' * (warnings > 1)}")
    return "; ".join(parts)


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value * 1e3:.3f} ms"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def measured_rows(measurement: Measurement) -> list[tuple[str, str, str]]:
    """(model, measured, predicted) per model, as text."""
    return [(row.model, _ms(row.measured_s), _ms(row.predicted_s)) for row in measurement.rows]


def measured_lines(measurement: Measurement) -> list[str]:
    """The measurement as the commands print it: the machine, a small table, the speed-ups."""
    lines = [
        f"{measurement.machine()}, median of {measurement.runs} paired runs",
        f"{'model':<14} {'measured':>10}   predicted ({measurement.spec or 'no spec'})",
    ]
    lines += [
        f"{model:<14} {measured:>10}   {predicted}"
        for model, measured, predicted in measured_rows(measurement)
    ]
    lines.append(speedup_summary(measurement))
    return lines + [f"note: {note}" for note in measurement.notes]


def speedup_summary(measurement: Measurement) -> str:
    """'mpqc's model runs at 1.48x the speed of float (predicted 2.31x), 0.86x the speed of
    uniform w8a8 (predicted 0.90x)'."""
    return "mpqc's model runs at " + ", ".join(
        f"{_ratio(measured)} the speed of {name} (predicted {_ratio(predicted)})"
        for name, (measured, predicted) in measurement.speedups().items()
    )


def _method(measurement: Measurement) -> str:
    return (
        f"Measured on {measurement.machine()}: thread CPU time, median of {measurement.runs} "
        f"paired runs in alternation. Predicted by the cost model for {measurement.spec}"
        + (
            f" (the bundled spec closest to this machine is {measurement.machine_spec})"
            if measurement.machine_spec and measurement.machine_spec != measurement.spec
            else ""
        )
        + "."
    )


def _kernel_rows(kernels: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    return [
        (
            row["layer"],
            row["bits"],
            row.get("planned") or "",
            "not found" if row["runs"] is None else f"{row['runs']} ({row['kernel']})",
        )
        for row in kernels.get("layers", [])
    ]


# --- Markdown ----------------------------------------------------------------------------------


def _md(text: str) -> str:
    return html.escape(text, quote=False).replace("|", "\\|")


def kernels_markdown(kernels: Mapping[str, Any] | None) -> list[str]:
    if not kernels:
        return []
    lines = [
        "## What onnxruntime runs",
        "",
        _md(kernel_summary(kernels)) + ".",
        "",
        *(f"- warning: {_md(text)}" for text in kernels.get("warnings", [])),
        "",
        "| layer | bits | plan predicted | onnxruntime runs |",
        "|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in _kernel_rows(kernels)]
    return ["", *lines]


def measured_markdown(measurement: Measurement | None) -> list[str]:
    if measurement is None:
        return []
    lines = [
        "",
        "## Measured latency",
        "",
        _md(_method(measurement)),
        "",
        "| model | measured | predicted |",
        "|---|---|---|",
        *(
            "| " + " | ".join(_md(cell) for cell in row) + " |"
            for row in measured_rows(measurement)
        ),
        "",
        _md(speedup_summary(measurement)) + ".",
    ]
    lines += [f"- note: {_md(note)}" for note in measurement.notes]
    return lines


# --- HTML --------------------------------------------------------------------------------------


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], flagged: set[int]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join(
        ('<tr class="warn">' if index in flagged else "<tr>")
        + "".join(f"<td>{html.escape(cell)}</td>" for cell in row)
        + "</tr>"
        for index, row in enumerate(rows)
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def kernels_html(kernels: Mapping[str, Any] | None) -> list[str]:
    if not kernels:
        return []
    layers = kernels.get("layers", [])
    warned = {
        index
        for index, row in enumerate(layers)
        if row["kernel"] in (None, _FLOAT_KIND)
        or row.get("planned", row["kernel"]) != row["kernel"]
    }
    return [
        "<h2>What onnxruntime runs</h2>",
        "<p>The kernels in onnxruntime's optimized graph (CPU provider), against the kernel the "
        "lowering plan predicted and the cost model priced: "
        f"{html.escape(kernel_summary(kernels))}.</p>",
        *(f'<p class="warning">⚠ {html.escape(text)}</p>' for text in kernels.get("warnings", [])),
        _table(
            ("layer", "bits", "plan predicted", "onnxruntime runs"), _kernel_rows(kernels), warned
        ),
    ]


def measured_html(measurement: Measurement | None) -> list[str]:
    if measurement is None:
        return []
    return [
        "<h2>Measured latency</h2>",
        f"<p>{html.escape(_method(measurement))}</p>",
        _table(("model", "measured", "predicted"), measured_rows(measurement), set()),
        f"<p>{html.escape(speedup_summary(measurement))}.</p>",
        *(f"<p>Note: {html.escape(note)}</p>" for note in measurement.notes),
    ]
