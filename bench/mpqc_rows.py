"""How the suite's mpqc rows are made: the ``mpqc`` command as a recipe, the analysis the search
rows share, and what ``mpqc --report-json`` adds to a row (predicted cost, bits, layers kept).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.baselines import QuantizeRequest, Recipe, RecipeError
from bench.run import Bench
from mpqc.core import Bits


def mpqc_executable() -> list[str]:
    """The ``mpqc`` command of this interpreter's environment (the suite may run without it on
    PATH)."""
    found = shutil.which("mpqc", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "mpqc.cli"]


def cli_recipe(
    name: str,
    model: Path | None,
    arguments: Sequence[str],
    report: Path,
    timeout_s: float,
    description: str,
) -> Recipe:
    """``mpqc MODEL ARGS -o OUT --calib DIR --report-json REPORT``, killed after ``timeout_s``.

    ``model`` replaces the float model the harness hands over (the search recipes start from the
    analysed model). Unlike ``bench.baselines.mpqc_recipe`` it bounds the wall time, so one runaway
    search costs a row, not the run, and it asks for the report the table's extra columns come from.
    """

    def quantize(request: QuantizeRequest) -> None:
        report.unlink(missing_ok=True)
        command = [
            *mpqc_executable(),
            str(model or request.float_model),
            *arguments,
            "-o",
            str(request.output),
            "--calib",
            str(request.calib_dir),
            "--report-json",
            str(report),
        ]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise RecipeError(f"mpqc did not finish within {timeout_s:.0f} s") from None
        if proc.returncode != 0:
            last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
            raise RecipeError(f"mpqc exited {proc.returncode}: {last[0]}")

    return Recipe(name, quantize, description)


def choice(bits: dict[str, Any]) -> str:
    """A layer's bits in the report, as mpqc spells the choice (``w8a8``, ``w8adyn``)."""
    return str(Bits(int(bits["w"]), int(bits["a"]), bool(bits.get("dynamic"))))


@dataclass(frozen=True)
class Analysis:
    """The analysed model, how long the analysis took, and its per-layer cost tables."""

    path: Path
    seconds: float
    costs: dict[str, dict[str, dict[str, float]]]
    fixed: dict[str, float]

    def predicted(self, bits: dict[str, dict[str, int]] | None) -> dict[str, float]:
        """The cost model's size and latency for per-layer bits (layers not named stay float)."""
        bits = bits or {}
        totals = {
            "latency_s": self.fixed.get("latency_s", 0.0),
            "size": self.fixed.get("size", 0.0),
        }
        for name, table in self.costs.items():
            chosen = bits.get(name)
            key = choice(chosen) if chosen and chosen["w"] != 32 else "float"
            entry = table.get(key) or table.get("float")
            if entry is None:
                continue
            for objective in totals:
                totals[objective] += float(entry[objective])
        return totals


def analyse(bench: Bench, pipeline: str, hw: str) -> Analysis:
    """Run the shared analysis ``pipeline`` once and save the model with its annotations."""
    import mpqc
    from mpqc import ir as mir
    from mpqc.ir import annotations

    start = time.perf_counter()
    result = mpqc.compile(
        str(bench.float_model),
        mpqc.CompileOptions(
            hw=hw,
            calibration=str(bench.calib_dir),
            pipeline=pipeline,
        ),
    )
    path = mir.save(result.ir_model, bench.workdir / "analysed.onnx")
    seconds = time.perf_counter() - start
    graph = result.ir_model.graph
    costs = {
        layer.name: annotations.COST.get(layer.node)
        for layer in mir.quantizable_layers(graph)
        if annotations.COST.has(layer.node)
    }
    fixed = (annotations.MODEL_COST.get(result.ir_model) or {}).get("fixed", {})
    return Analysis(Path(path), seconds, costs, fixed)


def explain_row(row: dict[str, Any], report: Path, analysis: Analysis | None) -> None:
    """Add what ``mpqc --report-json`` says to a row: predicted cost, and the layers kept high."""
    if "error" in row or not report.exists():
        return
    data = json.loads(report.read_text())
    if analysis is not None:
        row["predicted"] = analysis.predicted(data.get("bits"))
    explanation = data.get("explanation") or {}
    if explanation.get("summary"):
        row["kept"] = explanation["summary"]
    mix: dict[str, int] = {}
    for bits in (data.get("bits") or {}).values():
        key = choice(bits)
        mix[key] = mix.get(key, 0) + 1
    row["bits_mix"] = dict(sorted(mix.items()))
