"""Why each layer got its bits: the search's own account of its choice.

A mixed-precision result is only trusted when the user can see why a layer stayed at higher
precision, and the evidence — candidates, damage scores, costs, the resolved budget — exists only
while the search runs (``lower-qdq`` drops the cost and sensitivity annotations, which describe the
float model). So the search pass writes this account into its section of ``mpqc.report``, and the
report only renders it.

A layer not at its cheapest candidate gets one reason (and its ``kind``, the group the summary
counts):

- ``pinned (first/last compute layer)``: the search holds them at 8 bits (HAQ, HAWQ-V3);
- ``kept: ...``: the next cheaper candidate's extra damage per unit saved, against the cut-off —
  the costliest damage per unit among the drops the search did take. A layer above the cut-off is
  one a budget-greedy search would also keep; one below it was kept by the strategy's own
  trade-off (a knapsack's granularity, an exact evaluation that disagreed with the proxy);
- ``spec has no cheaper pair``: it is at its own cheapest candidate, but other layers go lower.

Layers the search never saw (left float by ``lower-qdq``: no quantized form, inside a ``Loop``
body) are ``lower-qdq``'s to explain, under ``left_float`` in the same report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mpqc.core.bits import Bits
from mpqc.search import Problem

__all__ = ["PINNED", "explain_choice"]

PINNED = "pinned (first/last compute layer)"

#: The unit each budgeted objective is shown in: (scale, name).
_UNITS = {
    "size": (1e3, "kB"),
    "latency": (1e-3, "ms"),
    "energy": (1e-3, "mJ"),
    "bops": (1e9, "GBOPs"),
}


def explain_choice(
    problem: Problem,
    config: Sequence[int],
    ops: Sequence[str],
    pinned: set[str],
    strategy: str,
    metric: str,
    left_out: Mapping[str, Sequence[Bits]] | None = None,
) -> dict[str, Any]:
    """The search's section of the report: what it worked against and a row per searched layer.

    ``config`` is the chosen candidate index per layer, ``ops`` the layers' op types, ``pinned``
    the names of the layers held at 8 bits or more and ``left_out`` the pairs of each layer that
    sensitivity analysis found the search could not choose (``choosable.py``).
    """
    left_out = left_out or {}
    objective = next(iter(problem.constraints), "size")
    scale, unit = _UNITS.get(objective, (1.0, objective))
    cost = problem.costs[objective]
    cutoff = _cutoff(problem.sensitivity, cost, config)
    cheapest_bits = min(
        p[0] * p[1]
        for i, choices in enumerate(problem.choices)
        for p in (*choices, *left_out.get(problem.layers[i], ()))
    )
    rows = []
    for i, name in enumerate(problem.layers):
        choices, damage, k = problem.choices[i], problem.sensitivity[i], config[i]
        candidates = [
            {
                "pair": str(Bits.of(choice)),
                "damage": float(damage[j]),
                "size": float(problem.costs["size"][i][j]),
                "latency_s": float(problem.costs["latency"][i][j]),
            }
            for j, choice in enumerate(choices)
        ]
        reason = kind = None
        w, a = choices[k][:2]
        if name in pinned and w * a > cheapest_bits:
            reason, kind = PINNED, "pinned"
        elif cost[i][k] > cost[i].min():
            kind = "kept by the search"
            reason = _kept_reason(
                choices,
                damage,
                cost[i],
                k,
                cutoff,
                objective,
                bool(problem.constraints),
                problem.costs["latency"][i],
            )
        elif any(p[0] * p[1] < w * a for p in left_out.get(name, ())):
            kind = "kept by the search"
            dropped = ", ".join(str(Bits.of(p)) for p in left_out[name])
            fits = "the budget fits" if problem.constraints else "no budget:"
            reason = (
                f"kept: {dropped} cannot be chosen ({fits} every layer at its highest bits, and "
                "fewer add damage; not measured)"
            )
        elif w * a > cheapest_bits:
            kind = "with no cheaper pair"
            pairs = ", ".join(c["pair"] for c in candidates)
            reason = f"spec has no cheaper pair for this layer (candidates: {pairs})"
        rows.append(
            {
                "layer": name,
                "op": ops[i],
                "chosen": str(Bits.of(choices[k])),
                "candidates": candidates,
                "reason": reason,
                "kind": kind,
            }
        )
    predicted = {
        obj: float(
            sum(cost_[i][config[i]] for i in range(len(config))) + problem.fixed_costs.get(obj, 0.0)
        )
        for obj, cost_ in problem.costs.items()
    }
    return {
        "strategy": strategy,
        "metric": metric,
        "objective": objective,
        "budget": problem.constraints.get(objective),
        "cutoff": cutoff,
        "unit": unit,
        "scale": scale,
        "predicted": predicted,
        "layers": rows,
    }


def _step_down(cost: np.ndarray, k: int) -> int | None:
    """The next cheaper candidate than ``k`` (the most expensive of those cheaper), or None."""
    cheaper = [j for j in range(len(cost)) if cost[j] < cost[k]]
    return max(cheaper, key=lambda j: cost[j]) if cheaper else None


def _cutoff(
    damage: Sequence[np.ndarray], cost: Sequence[np.ndarray], config: Sequence[int]
) -> float | None:
    """The largest damage per unit saved among the steps the search took below a layer's dearest
    pair."""
    ratios = []
    for d, c, k in zip(damage, cost, config, strict=True):
        dearer = [j for j in range(len(c)) if c[j] > c[k]]
        if dearer:
            up = min(dearer, key=lambda j: c[j])
            ratios.append((d[k] - d[up]) / (c[up] - c[k]))
    return float(max(ratios)) if ratios else None


def _kept_reason(
    choices: Sequence[tuple[int, int]],
    damage: np.ndarray,
    cost: np.ndarray,
    k: int,
    cutoff: float | None,
    objective: str,
    budgeted: bool,
    latency: np.ndarray,
) -> str:
    """Why the layer is not one step cheaper in ``objective``: the damage per unit that step
    saves, and, where the cheaper form runs slower (an 8-bit GRU or LSTM behind DequantizeLinear,
    a 4-bit conv), by how much."""
    j = _step_down(cost, k)
    assert j is not None  # the caller checked that a cheaper candidate exists
    scale, unit = _UNITS.get(objective, (1.0, objective))
    added, saved = float(damage[j] - damage[k]), float(cost[k] - cost[j])
    ratio = added / saved * scale
    text = (
        f"kept: {Bits(*choices[j])} would add {added:+.3g} damage to save "
        f"{saved / scale:.3g} {unit} ({ratio:.3g}/{unit}"
    )
    if cutoff is not None and ratio >= cutoff * scale:
        text += f", above the costliest drop taken, {cutoff * scale:.3g}/{unit})"
    elif cutoff is not None:
        text += (
            f", below the costliest drop taken, {cutoff * scale:.3g}/{unit}: "
            f"the search saved the {unit} elsewhere)"
        )
    else:
        text += ")"
    slower = float(latency[j] - latency[k])
    if objective != "latency" and slower > 0:
        text += f"; it would also run {slower * 1e3:.3g} ms slower"
    return text + ("; the budget was met without it" if budgeted else "; no budget asked for it")
