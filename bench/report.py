"""Benchmark results as one markdown table per model."""

from __future__ import annotations

from typing import Any


def _number(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    """Metrics first (the task's primary one leading), then MB, latency (ms, and the back-to-back ratio
    to float), quantize seconds. A failed recipe shows its error instead."""
    sections = []
    for name, model in results["models"].items():
        metric_names = model["metric_names"]
        header = ["recipe", *metric_names, "MB", "ms 1T", "ms 2T", "vs float 1T", "vs float 2T", "quantize s"]
        rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in model["rows"]:
            if "error" in row:
                rows.append(f"| {row['recipe']} | failed: {row['error'][:120]} |" + " |" * (len(header) - 2))
                continue
            cells = [row["recipe"], *(_number(row["metrics"].get(m), 4) for m in metric_names),
                     _number(row["size_mb"], 2), _number(row["latency_ms_1t"], 2),
                     _number(row["latency_ms_2t"], 2), _number(row["latency_vs_float_1t"], 2),
                     _number(row["latency_vs_float_2t"], 2), _number(row.get("quantize_s"), 1)]
            rows.append("| " + " | ".join(cells) + " |")
        sizes = model["sizes"]
        sections.append(f"### {name} — {model['description']}\n\n{sizes['n_eval']} evaluation / "
                        f"{sizes['n_calib']} calibration samples, seed {sizes['seed']}\n\n" + "\n".join(rows))
    return "\n\n".join(sections) + "\n"
