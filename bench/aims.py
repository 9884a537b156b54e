"""The aims of issue 15, judged from one model's suite results (ratios from one run).

- At the careful onnxruntime recipe's file size, mpqc's default pipeline (row ``mpqc@1x``) keeps a
  metric at least the best onnxruntime recipe's, among those whose file is no bigger than the
  careful one's, and runs at 1 thread within ``LATENCY_SLACK`` of the careful recipe (paired with
  it). On PP-OCRv4 its line accuracy is also within half a point of float's.
- At half that size (``mpqc@0.5x``): within one point of float and no slower than float (1 thread,
  paired with float).
- Wall time: the default pipeline at most ``WALL_LIMIT`` x ``quantize_static``'s (the careful
  recipe's; goal ``WALL_GOAL`` x), ``--uniform w8a8`` at most 1x.

Each verdict is "met" or "not met" with the numbers it was judged on; a row that failed (mpqc
refused a budget, say) is "not met" with its reason.
"""

from __future__ import annotations

from typing import Any

from bench.baselines import CAREFUL

AT_SIZE, HALF, UNIFORM = "mpqc@1x", "mpqc@0.5x", "mpqc-w8a8"
#: 1-thread latency against the careful recipe's: the issue's 1.05x.
LATENCY_SLACK = 1.05
#: Points of the primary metric (x 100) a model may lose to float at half size.
HALF_GAP_POINTS = 1.0
#: Models whose at-size row must also stay this close to float (issue 15: PP-OCRv4 line accuracy).
AT_SIZE_GAP_POINTS = {"ppocr-rec": 0.5}
WALL_LIMIT, WALL_GOAL = 3.0, 2.0
#: onnxruntime files up to this much over the careful one's still count as "at its size".
SIZE_TOLERANCE = 1.01


def _verdict(met: bool) -> str:
    return "met" if met else "not met"


def _failed(row: dict[str, Any] | None, name: str) -> str | None:
    if row is None:
        return f"no {name} row"
    if "error" in row:
        return f"not met: {name} failed: {row['error'].split(': ', 1)[-1][:120]}"
    return None


def best_onnxruntime(rows: dict[str, dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The onnxruntime row with the best metric among those no bigger than the careful recipe's."""
    careful = rows.get(CAREFUL)
    if careful is None or "error" in careful:
        return None
    limit = careful["size_mb"] * SIZE_TOLERANCE
    candidates = [
        row
        for name, row in rows.items()
        if name.startswith("ort-") and "error" not in row and row["size_mb"] <= limit
    ]
    return max(candidates, key=lambda row: row["metrics"][metric], default=None)


def at_size(name: str, model: dict[str, Any]) -> str:
    metric = model["metric_names"][0]
    rows = {row["recipe"]: row for row in model["rows"]}
    row = rows.get(AT_SIZE)
    failed = _failed(row, AT_SIZE)
    if failed:
        return failed
    best = best_onnxruntime(rows, metric)
    value, float_value = row["metrics"][metric], rows["float"]["metrics"][metric]
    parts, met = [f"{value:.4f}"], True
    if best is not None:
        beats = value >= best["metrics"][metric]
        parts.append(f"{'≥' if beats else '<'} {best['metrics'][metric]:.4f} ({best['recipe']})")
        met &= beats
    vs_careful = row.get("latency_vs_careful_1t")
    if vs_careful is not None:
        parts.append(f"{vs_careful:.2f}x careful")
        met &= vs_careful <= LATENCY_SLACK
    limit = AT_SIZE_GAP_POINTS.get(name)
    if limit is not None:
        gap = 100 * (float_value - value)
        parts.append(f"{gap:+.2f} pts to float (≤ {limit:g})")
        met &= gap <= limit
    return f"{', '.join(parts)}, {row['size_mb']:.2f} MB: {_verdict(met)}"


def half(model: dict[str, Any]) -> str:
    metric = model["metric_names"][0]
    rows = {row["recipe"]: row for row in model["rows"]}
    row = rows.get(HALF)
    failed = _failed(row, HALF)
    if failed:
        return failed
    gap = 100 * (rows["float"]["metrics"][metric] - row["metrics"][metric])
    speed = row["latency_vs_float_1t"]
    met = gap <= HALF_GAP_POINTS and speed <= 1.0
    return (
        f"{row['metrics'][metric]:.4f} ({gap:+.2f} pts), {speed:.2f}x float, "
        f"{row['size_mb']:.2f} MB: {_verdict(met)}"
    )


def wall(model: dict[str, Any]) -> str:
    rows = {row["recipe"]: row for row in model["rows"]}
    careful = rows.get(CAREFUL)
    if careful is None or "error" in careful or not careful.get("quantize_s"):
        return "no careful recipe row"
    parts = []
    for name, limit in ((AT_SIZE, WALL_LIMIT), (UNIFORM, 1.0)):
        row = rows.get(name)
        if row is None or "error" in row:
            parts.append(f"{name}: no time")
            continue
        ratio = row["quantize_s"] / careful["quantize_s"]
        parts.append(f"{name} {ratio:.2f}x (≤ {limit:g}): {_verdict(ratio <= limit)}")
    return f"{'; '.join(parts)} [quantize_static {careful['quantize_s']:.1f} s]"


def aims_table(models: dict[str, dict[str, Any]]) -> str:
    """One line per model: each aim's numbers and verdict."""
    lines = [
        "| model | metric: float | careful recipe: metric, MB, vs float 1T "
        "| at its size: mpqc@1x ≥ best ort at ≤ that size, ≤ 1.05x careful 1T "
        "| at half its size: mpqc@0.5x ≤ 1 pt from float, ≤ 1.00x float 1T "
        "| wall time vs quantize_static (goal ≤ 2) |",
        "|---|---|---|---|---|---|",
    ]
    for name, model in models.items():
        metric = model["metric_names"][0]
        rows = {row["recipe"]: row for row in model["rows"]}
        careful = rows.get(CAREFUL)
        careful_text = (
            "—"
            if careful is None or "error" in careful
            else f"{careful['metrics'][metric]:.4f}, {careful['size_mb']:.2f} MB, "
            f"{careful['latency_vs_float_1t']:.2f}x"
        )
        lines.append(
            f"| {name} | {metric}: {rows['float']['metrics'][metric]:.4f} | {careful_text} "
            f"| {at_size(name, model)} | {half(model)} | {wall(model)} |"
        )
    return "\n".join(lines)
