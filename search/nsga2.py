"""``nsga2``: MOHAQ's NSGA-II over per-layer choices (METHODS §5, pymoo).

One integer gene per tie class (a choice index), so tied layers can never disagree. Objectives
are the problem's (``error`` from the evaluator, costs from the tables), constraints enter as
MOHAQ's normalized ``g = (value − limit) / limit ≤ 0``. Operators and sizes are those of the
MOHAQ code: population 40, 10 offspring per generation, integer random sampling, SBX
(``p = 1, η = 3``) and polynomial mutation (``η = 3``) on rounded integers, duplicate
elimination. The uniform points (w8a8, w4a8, ...) are seeded into the first population
(METHODS §8).

Every configuration pymoo evaluates is archived; the front is taken over the archive and the
uniform points, so a good configuration found early and later lost from the population still
counts. Each generation is evaluated as one batch, which is where an executor parallelizes
exact evaluations. Deterministic: pymoo's random state is seeded from ``rng``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.problem import Problem as PymooProblem
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.operators.sampling.rnd import IntegerRandomSampling
from pymoo.optimize import minimize

from mpqc.search.evaluate import Evaluator, config_key, evaluate_uniform
from mpqc.search.pareto import Point, SearchResult, make_result
from mpqc.search.problem import ERROR, Problem, SearchError

ErrorsOf = Callable[[np.ndarray], Sequence[float]]
"""``(N, L)`` configurations -> their errors (the evaluator's ``many``, or MOHAQ's beacons)."""

_WORST = 1e30
"""Stands in for an infinite error inside pymoo, whose crowding distance cannot take inf."""


@dataclass(frozen=True)
class Options:
    """Options of the ``nsga2`` strategy (defaults: the MOHAQ code)."""

    population: int = field(default=40, metadata={"help": "population size"})
    offspring: int = field(default=10, metadata={"help": "offspring per generation"})
    generations: int = field(default=60, metadata={"help": "generations after the first"})
    crossover_eta: float = field(default=3.0, metadata={"help": "SBX distribution index"})
    mutation_eta: float = field(default=3.0, metadata={"help": "polynomial mutation index"})


class _PymooProblem(PymooProblem):
    """The search problem as pymoo sees it: genes in, objectives and ``g`` out, archived."""

    def __init__(
        self,
        problem: Problem,
        errors_of: ErrorsOf,
        exact: bool,
        archive: dict[tuple[int, ...], Point],
    ) -> None:
        self.problem, self.errors_of, self.exact, self.archive = (
            problem,
            errors_of,
            exact,
            archive,
        )
        self.limits = dict(problem.constraints)
        super().__init__(
            n_var=len(problem.tie_classes),
            n_obj=len(problem.objectives),
            n_ieq_constr=len(self.limits),
            xl=0,
            xu=problem.class_choices - 1,
            vtype=int,
        )

    def _evaluate(self, x: np.ndarray, out: dict, *args: object, **kwargs: object) -> None:
        configs = self.problem.expand(np.round(x).astype(np.int64))
        columns = {}
        for name in self.problem.objectives:
            if name == ERROR:
                columns[name] = np.asarray(self.errors_of(configs), dtype=float)
            else:
                columns[name] = np.atleast_1d(self.problem.total(name, configs))
        for row, config in enumerate(configs):
            key = config_key(config)
            if key not in self.archive:
                self.archive[key] = Point(
                    key, {n: float(v[row]) for n, v in columns.items()}, self.exact
                )
        objectives = np.column_stack([columns[n] for n in self.problem.objectives])
        out["F"] = np.minimum(objectives, _WORST)
        if self.limits:
            out["G"] = np.column_stack(
                [
                    (np.atleast_1d(self.problem.total(name, configs)) - limit) / abs(limit or 1.0)
                    for name, limit in self.limits.items()
                ]
            )


def initial_population(problem: Problem, size: int, rng: np.random.Generator) -> np.ndarray:
    """The uniform configurations (as genes), then distinct random genes up to ``size``."""
    seeds = [problem.compress(c) for c in problem.uniform_configs().values()][:size]
    rows = {tuple(s.tolist()): s for s in seeds}
    space = math.prod(int(k) for k in problem.class_choices)
    while len(rows) < min(size, space):
        genes = rng.integers(0, problem.class_choices)
        rows.setdefault(tuple(genes.tolist()), genes)
    return np.array(list(rows.values()), dtype=np.int64)


def evolve(
    problem: Problem, errors_of: ErrorsOf, exact: bool, options: Options, rng: np.random.Generator
) -> list[Point]:
    """Run NSGA-II; return every configuration it evaluated, as points."""
    if options.population < 2 or options.offspring < 1 or options.generations < 0:
        raise SearchError("nsga2 needs population >= 2, offspring >= 1, generations >= 0")
    archive: dict[tuple[int, ...], Point] = {}  # every evaluated configuration, in order
    pymoo_problem = _PymooProblem(problem, errors_of, exact, archive)
    population = initial_population(problem, options.population, rng)
    algorithm = NSGA2(
        pop_size=len(population),
        n_offsprings=options.offspring,
        sampling=population if len(population) else IntegerRandomSampling(),
        crossover=SBX(prob=1.0, eta=options.crossover_eta, vtype=float, repair=RoundingRepair()),
        mutation=PM(eta=options.mutation_eta, vtype=float, repair=RoundingRepair()),
        eliminate_duplicates=True,
    )
    minimize(
        pymoo_problem,
        algorithm,
        ("n_gen", options.generations + 1),
        seed=int(rng.integers(2**31 - 1)),
        verbose=False,
    )
    return list(archive.values())


def search(
    problem: Problem, evaluator: Evaluator, options: Options, rng: np.random.Generator
) -> SearchResult:
    """NSGA-II with the evaluator's errors."""
    uniform = evaluate_uniform(problem, evaluator)
    candidates = evolve(problem, evaluator.many, evaluator.exact, options, rng)
    notes = [
        f"{len(candidates)} configurations evaluated over {options.generations + 1} generations"
    ]
    return make_result("nsga2", problem, candidates, uniform, evaluator.calls, notes)
