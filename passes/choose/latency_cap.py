"""The implicit latency limit: a budget that does not name latency never buys a slower model.

Bytes are not free on onnxruntime's CPU provider: a weight below 8 bits that no integer kernel
reads runs a float kernel (MatMulNBits on the packed weight, or a float Conv behind a
DequantizeLinear), slower than the int8 kernel it replaces. A user who asks for a size budget alone
expects the smaller model, not a slower one; so when the constraints do not mention latency the
search adds one, the predicted latency of uniform w8a8 on the target (the model onnxruntime's own
int8 recipe gives them), and says so in a note. ``--max-latency`` replaces it.

When the user's budgets can only be met by a slower model, the search stops with the reason: the
fastest configuration within those budgets, its predicted latency against uniform w8a8's, and the
layers whose choices cost the difference, so the user can allow it with ``--max-latency`` or
change the budget.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mpqc.core.bits import Bits
from mpqc.search import InfeasibleError, Problem
from mpqc.search.ilp import solve
from mpqc.search.problem import SearchError, format_value

__all__ = ["ForcedSlowdownError", "LATENCY", "REFERENCE", "capped", "uniform_latency"]

LATENCY = "latency"
#: The configuration whose predicted latency the implicit limit is.
REFERENCE = Bits(8, 8)
#: Layers a forced-slowdown message names (the costliest first).
_NAMED = 5


class ForcedSlowdownError(InfeasibleError):
    """The budgets need a model predicted slower than uniform w8a8 (exit 2, like any infeasible
    budget), with the layers that cost the difference."""

    def __init__(self, message: str, limit: float, cheapest: float) -> None:
        self.objective, self.limit, self.cheapest, self.given = LATENCY, limit, cheapest, {}
        SearchError.__init__(self, message)


def uniform_latency(problem: Problem) -> float | None:
    """Predicted latency of every layer at ``REFERENCE`` (None when a layer cannot take it)."""
    config = []
    for pairs in problem.choices:
        if REFERENCE not in pairs:
            return None
        config.append(pairs.index(REFERENCE))
    return float(problem.total(LATENCY, np.array(config)))


def capped(problem: Problem) -> tuple[Problem, float | None]:
    """``problem`` with the implicit latency limit added (and the limit), or unchanged (None) when
    the user's constraints name latency, there are none, or uniform w8a8 is not a candidate.

    Raises ``ForcedSlowdownError`` when the user's budgets cannot be met under the limit."""
    if not problem.constraints or LATENCY in problem.constraints:
        return problem, None
    limit = uniform_latency(problem)
    if limit is None:
        return problem, None
    constraints = {**problem.constraints, LATENCY: limit}
    limited = dataclasses.replace(problem, constraints=constraints)
    try:
        limited.check_feasible()
    except InfeasibleError as error:
        if error.objective != LATENCY:
            raise
        raise _slowdown(problem, limit) from None
    return limited, limit


def _slowdown(problem: Problem, limit: float) -> ForcedSlowdownError:
    """The reason the user's budgets need a slower model: the fastest configuration within them
    and, per layer, what its choice costs over the layer at ``REFERENCE``."""
    latency = problem.cost_table(LATENCY)
    fastest = solve(problem, latency, dict(problem.constraints))
    assert fastest is not None  # the user's budgets alone were checked feasible
    cheapest = float(problem.total(LATENCY, fastest))
    extra = []
    for i, (pairs, k) in enumerate(zip(problem.choices, fastest, strict=True)):
        reference = latency[i][pairs.index(REFERENCE)]
        if latency[i][k] > reference:
            extra.append((latency[i][k] - reference, problem.layers[i], Bits(*pairs[k])))
    extra.sort(reverse=True)
    named = ", ".join(
        f"{name} {pair} +{format_value(seconds, 's')}" for seconds, name, pair in extra[:_NAMED]
    )
    more = f" and {len(extra) - _NAMED} more" if len(extra) > _NAMED else ""
    budgets = " and ".join(
        f"max-{name} {format_value(value, problem.units.get(name, ''))}"
        for name, value in problem.constraints.items()
    )
    message = (
        f"{budgets} needs a model predicted slower than uniform {REFERENCE}: the fastest "
        f"within it takes {format_value(cheapest, 's')} against {format_value(limit, 's')} "
        f"({cheapest / limit:.2f}x); the layers that cost it: {named}{more}. "
        f"Allow it with --max-latency {format_value(cheapest * 1.001, 's').replace(' ', '')}, "
        "or give a larger budget"
    )
    return ForcedSlowdownError(message, limit, cheapest)
