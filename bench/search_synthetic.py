"""Search strategies on synthetic problems: speed at scale, quality against the true front.

    python bench/search_synthetic.py [--strategies ilp,greedy,...] [--seeds 3]

Prints two markdown tables:

1. wall and CPU seconds of each strategy on a 500-layer × 12-choice problem (weight bits
   {16, 8, 6, 4, 3, 2} × activation bits {8, 4}, size limit 60% of w8a8), with the additive
   proxy as error; plus one ILP solve at the size limit on its own;
2. each strategy's hypervolume as a fraction of the exhaustive front's, on problems small enough
   to enumerate, mean and minimum over seeds (reference point: the true front's nadir plus 10%
   of its range).
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable
from functools import partial

import numpy as np

import mpqc.search as search
from mpqc.search.ilp import OneHotModel
from mpqc.search.pareto import hypervolume, non_dominated, objective_matrix
from mpqc.search.problem import Problem
from mpqc.search.synthetic import synthetic_problem

LARGE_PAIRS = tuple((w, a) for w in (16, 8, 6, 4, 3, 2) for a in (8, 4))
ENUMERABLE = {
    "6 layers x 4 choices": (6, ((8, 8), (6, 8), (4, 8), (2, 8))),
    "8 layers x 3 choices": (8, ((8, 8), (4, 8), (4, 4))),
    "12 layers x 2 choices": (12, ((8, 8), (4, 8))),
}
LARGE_OPTIONS = {"nsga2": {"generations": 100}, "mohaq": {"generations": 100}}


def timed(fn: Callable[[], object]) -> tuple[object, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def exhaustive_front(problem: Problem) -> tuple:
    genes = np.array(list(itertools.product(*(range(int(k)) for k in problem.class_choices))))
    configs = problem.expand(genes)
    errors = problem.proxy_error(configs)
    sizes = problem.total("size", configs)
    points = [
        search.Point(tuple(c), {"error": e, "size": s}, False)
        for c, e, s in zip(configs.tolist(), errors, sizes, strict=True)
    ]
    return non_dominated(points, problem.objectives)


def speed_table(strategies: list[str]) -> list[str]:
    problem = synthetic_problem(500, LARGE_PAIRS, seed=1, size_ratio=0.6)
    rows = [
        "| strategy (500 layers x 12 choices, proxy error) | wall s | CPU s | "
        "chosen error | chosen size MB | front points |",
        "|---|---|---|---|---|---|",
    ]
    model = OneHotModel(problem)
    config, wall, cpu = timed(lambda: model.solve(problem.sensitivity_table(), problem.constraints))
    rows.append(
        f"| one ILP solve at the size limit | {wall:.3f} | {cpu:.3f} | "
        f"{problem.proxy_error(config):.1f} | "
        f"{problem.total('size', config) / 1e6:.2f} | 1 |"
    )
    for name in strategies:
        options = LARGE_OPTIONS.get(name, {})
        result, wall, cpu = timed(partial(search.run, problem, name, seed=0, **options))
        label = name + "".join(f", {k}={v}" for k, v in options.items())
        rows.append(
            f"| {label} | {wall:.3f} | {cpu:.3f} | "
            f"{result.chosen.objectives['error']:.1f} | "
            f"{result.chosen.objectives['size'] / 1e6:.2f} | {len(result.front)} |"
        )
    return rows


def quality_table(strategies: list[str], seeds: int) -> list[str]:
    rows = [
        "| strategy | " + " | ".join(f"HV {label} (mean / min)" for label in ENUMERABLE) + " |",
        "|---" * (len(ENUMERABLE) + 1) + "|",
    ]
    fractions: dict[str, dict[str, list[float]]] = {s: {} for s in strategies}
    for label, (n_layers, pairs) in ENUMERABLE.items():
        for seed in range(seeds):
            problem = synthetic_problem(n_layers, pairs, seed=seed)
            truth = exhaustive_front(problem)
            matrix = objective_matrix(truth, problem.objectives)
            ref = matrix.max(axis=0) + 0.1 * np.ptp(matrix, axis=0)
            best = hypervolume(truth, problem.objectives, ref)
            for name in strategies:
                front = search.run(problem, name, seed=seed).front
                fractions[name].setdefault(label, []).append(
                    hypervolume(front, problem.objectives, ref) / best
                )
    for name in strategies:
        cells = [f"{np.mean(v):.4f} / {np.min(v):.4f}" for v in fractions[name].values()]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--strategies",
        default=",".join(search.strategies()),
        help="comma-separated strategy names (default: all registered)",
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds per enumerable problem")
    args = parser.parse_args()
    strategies = [s for s in args.strategies.split(",") if s]
    print("\n".join(speed_table(strategies)))
    print()
    print("\n".join(quality_table(strategies, args.seeds)))


if __name__ == "__main__":
    main()
