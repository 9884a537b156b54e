"""``hago``: HAGO's greedy coordinate search over what the hardware allows (METHODS §2).

HAGO (Jiang et al., arXiv 2103.14949; code ``ZihengJiang/tvm-hago``, ``python/tvm/hago/search.py``,
``GreedySearchTuner``) is post-training: a hardware description says which operators run in
integer and at which widths, a topology analysis turns that into a list of legal bit choices per
quantized edge (the widest the producer and consumer accept, down to 4 bits, highest first), and a
tuner searches those choices on a labeled calibration set with accuracy as the only objective:

    for edge k in topological order:
        for each choice c of edge k:  trial = decided[:k] + [c] + default[k+1:]   (default = widest)
        decided[k] = the choice of the most accurate trial

so the search costs ``Σ_k |choices_k|`` evaluations. The *sequential* variant stops trying lower
choices of an edge once a trial is less accurate than the best so far.

In mpqc the topology analysis is the cost pass's: a layer's candidates are exactly the
``(w, a)`` pairs the spec runs for its operator (float where only float runs, 2-bit only where the
chip has it), intersected with ``--wbits/--abits``, so this search explores only what the
hardware allows — a layer with one legal choice is not searched at all. A `Problem` layer is
HAGO's quantized edge; tied layers (``problem.groups``) are one edge. What mpqc adds, as
METHODS §2 says:

* **Errors, not accuracy**: a trial's score is the evaluator's error (exact when the search pass
  has calibration data, else the additive sensitivity proxy).
* **Ties toward lower cost**: trials whose error is within ``tolerance`` of the best count as
  equally accurate and the cheapest of them is kept. Errors have no common unit across models, so
  the tolerance is a fraction of a typical layer's effect: the error span of the search
  (all-lowest minus all-widest) divided by the number of searched layers. 0 gives HAGO's
  accuracy-only choice, which never lowers a layer for free; the default is measured in
  bench/RESULTS.md §3b.
* **Constraints**: a trial is admissible only if the budget can still be met by putting every
  undecided edge at its cheapest; the rest are rejected unevaluated. With one constraint this is
  exact, so the decided configuration always meets it; with several it is the per-constraint
  necessary condition, and the final configuration is checked like any other point.
* **Range**: choices below ``min_bits`` (HAGO: 4) are left out, unless the budget cannot be met
  without them — then the full candidate lists are searched and a note says so.

The front is the Pareto set of every evaluated trial plus the uniform points; the chosen point is
HAGO's decided configuration.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from mpqc.search.evaluate import Evaluator, evaluate_points, evaluate_uniform
from mpqc.search.ilp import swept_objective
from mpqc.search.pareto import SearchResult, make_result
from mpqc.search.problem import FEASIBILITY_RTOL, Config, Problem, SearchError

__all__ = ["Options", "Trial", "coordinate_search", "edge_choices", "search"]


@dataclass(frozen=True)
class Options:
    """Options of the ``hago`` strategy."""

    min_bits: int = field(
        default=4,
        metadata={
            "help": "narrowest weight or activation width searched (HAGO: 4); "
            "widened automatically when the budget needs lower"
        },
    )
    tolerance: float = field(
        default=0.001,
        metadata={
            "help": "errors within this fraction of a typical layer's effect (the error span over "
            "the searched layers) count as equal, the cheapest is kept (0: HAGO's accuracy only)"
        },
    )
    sequential: bool = field(
        default=False,
        metadata={
            "help": "HAGO's sequential tuner: stop trying lower choices of an edge once a trial "
            "is worse than the best so far"
        },
    )
    cost: str | None = field(
        default=None,
        metadata={
            "help": "cost ties are broken on "
            "(default: the first constraint, else the first cost objective)"
        },
    )


@dataclass(frozen=True)
class Trial:
    """One evaluated trial of the coordinate search."""

    edge: int
    """The tie class whose choice was being decided."""
    choice: int
    config: tuple[int, ...]
    error: float


def edge_choices(problem: Problem, min_bits: int) -> list[list[int]]:
    """Per tie class, the candidate indices searched, widest first (the problem's order).

    Candidates with weights or activations narrower than ``min_bits`` are dropped, unless that
    would leave a class with none.
    """
    choices = []
    for members in problem.tie_classes:
        pairs = problem.choices[members[0]]
        kept = [k for k, (w, a, *_) in enumerate(pairs) if w >= min_bits and a >= min_bits]
        choices.append(kept or list(range(len(pairs))))
    return choices


def _cheapest_reachable(problem: Problem, choices: list[list[int]]) -> dict[str, np.ndarray]:
    """Per constraint, each class's cheapest cost among its searched choices."""
    cheapest = {}
    for name in problem.constraints:
        table = problem.class_table(problem.cost_table(name))
        cheapest[name] = np.array([table[g, ks].min() for g, ks in enumerate(choices)])
    return cheapest


def _admissible(
    problem: Problem,
    genes: np.ndarray,
    edge: int,
    tables: dict[str, np.ndarray],
    cheapest: dict[str, np.ndarray],
) -> bool:
    """Can the budget still be met with classes ``≤ edge`` as in ``genes`` and the rest cheapest?"""
    for name, limit in problem.constraints.items():
        decided = tables[name][np.arange(edge + 1), genes[: edge + 1]].sum()
        total = decided + cheapest[name][edge + 1 :].sum() + problem.fixed_costs[name]
        if total > limit + FEASIBILITY_RTOL * max(abs(limit), 1.0):
            return False
    return True


def coordinate_search(
    problem: Problem,
    evaluator: Evaluator,
    choices: list[list[int]],
    epsilon: float,
    cost: str,
    sequential: bool = False,
) -> tuple[Config, list[Trial]]:
    """HAGO's greedy tuner over tie classes in topological order; returns the decided
    configuration and every trial in the order it was made."""
    tables = {name: problem.class_table(problem.cost_table(name)) for name in problem.constraints}
    cheapest = _cheapest_reachable(problem, choices)
    cost_table = problem.class_table(problem.cost_table(cost))
    genes = np.array([ks[0] for ks in choices], dtype=np.int64)  # HAGO's default: the widest
    trials: list[Trial] = []
    for edge, searched in enumerate(choices):
        if len(searched) == 1:  # one legal choice: nothing to search
            continue
        tried: list[tuple[int, float]] = []
        for k in searched:
            trial = genes.copy()
            trial[edge] = k
            if not _admissible(problem, trial, edge, tables, cheapest):
                continue
            config = problem.expand(trial)
            error = evaluator(config)
            trials.append(Trial(edge, k, tuple(int(c) for c in config), error))
            best = min((e for _, e in tried), default=error)
            tried.append((k, error))
            if sequential and error > best + epsilon:
                break
        if not tried:  # pragma: no cover - the previous decision left a feasible completion
            raise SearchError(f"hago: no admissible choice for layer {edge}")
        best = min(e for _, e in tried)
        equal = [k for k, e in tried if e <= best + epsilon]
        genes[edge] = min(equal, key=lambda k: (cost_table[edge, k], k))
    return problem.expand(genes), trials


def _needs_narrower_than(problem: Problem, choices: list[list[int]]) -> bool:
    """True when the budget cannot be met with the searched choices alone."""
    cheapest = _cheapest_reachable(problem, choices)
    return any(
        cheapest[name].sum() + problem.fixed_costs[name]
        > limit + FEASIBILITY_RTOL * max(abs(limit), 1.0)
        for name, limit in problem.constraints.items()
    )


def search(
    problem: Problem, evaluator: Evaluator, options: Options, rng: np.random.Generator
) -> SearchResult:
    """HAGO's coordinate search (``rng`` unused: the method is deterministic)."""
    if options.tolerance < 0:
        raise SearchError(f"hago tolerance must be >= 0, got {options.tolerance}")
    notes = []
    choices = edge_choices(problem, options.min_bits)
    if _needs_narrower_than(problem, choices):
        choices = edge_choices(problem, 0)
        notes.append(
            f"the budget needs widths below {options.min_bits} bits: all candidates searched"
        )
    cost = swept_objective(problem, options.cost)
    widest = problem.expand(np.array([ks[0] for ks in choices], dtype=np.int64))
    lowest = problem.expand(np.array([ks[-1] for ks in choices], dtype=np.int64))
    searchable = sum(len(ks) > 1 for ks in choices)
    per_layer = max(evaluator(lowest) - evaluator(widest), 0.0) / max(searchable, 1)
    decided, trials = coordinate_search(
        problem, evaluator, choices, options.tolerance * per_layer, cost, options.sequential
    )
    notes.append(
        f"greedy coordinate search: {len(trials)} trials over "
        f"{sum(len(ks) for ks in choices if len(ks) > 1)} choices of {searchable} searchable "
        f"layers, ties within {options.tolerance:g} of a layer's mean effect broken toward "
        f"lower {cost}"
    )
    uniform = evaluate_uniform(problem, evaluator)
    configs = [np.array(t.config) for t in trials] + [widest, lowest, decided]
    candidates = evaluate_points(problem, evaluator, configs)
    result = make_result("hago", problem, candidates, uniform, evaluator.calls, notes)
    if not problem.feasible(decided):  # only possible with several constraints
        return dataclasses.replace(
            result, notes=(*result.notes, "the decided configuration misses a constraint")
        )
    return dataclasses.replace(result, chosen=candidates[-1])
