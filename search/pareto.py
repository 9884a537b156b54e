"""Pareto points, fronts, hypervolume, the chosen point and the result every strategy returns.

All objectives are minimized. Fronts are sorted by their objective vector, then by
configuration, so the same set of points always prints and serializes the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from pymoo.indicators.hv import HV
from pymoo.util.nds.non_dominated_sorting import find_non_dominated

from mpqc.search.problem import ERROR, Problem, SearchError


@dataclass(frozen=True)
class Point:
    """One evaluated configuration."""

    config: tuple[int, ...]
    objectives: Mapping[str, float]
    """Objective name -> value (all minimized)."""
    exact: bool
    """True when ``objectives["error"]`` came from the exact evaluator, not the proxy."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", tuple(np.asarray(self.config, dtype=np.int64).tolist()))
        object.__setattr__(
            self,
            "objectives",
            MappingProxyType({name: float(value) for name, value in self.objectives.items()}),
        )

    def __hash__(self) -> int:
        return hash((self.config, tuple(sorted(self.objectives.items())), self.exact))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Point):
            return NotImplemented
        return (self.config, dict(self.objectives), self.exact) == (
            other.config,
            dict(other.objectives),
            other.exact,
        )

    def vector(self, objectives: Sequence[str]) -> tuple[float, ...]:
        return tuple(self.objectives[name] for name in objectives)


def objective_matrix(points: Sequence[Point], objectives: Sequence[str]) -> np.ndarray:
    """``(N, M)`` array of the points' objective values."""
    return np.array([p.vector(objectives) for p in points], dtype=float).reshape(
        len(points), len(objectives)
    )


def sort_points(points: Iterable[Point], objectives: Sequence[str]) -> tuple[Point, ...]:
    """Deterministic order: by objective vector, then configuration."""
    return tuple(sorted(points, key=lambda p: (p.vector(objectives), p.config)))


def non_dominated(points: Iterable[Point], objectives: Sequence[str]) -> tuple[Point, ...]:
    """The points no other point dominates, one per configuration, sorted.

    Points with equal objective vectors but different configurations are all kept: neither
    dominates the other, and the caller may prefer one for reasons the objectives do not see.
    """
    unique = {p.config: p for p in points}
    candidates = sort_points(unique.values(), objectives)
    if not candidates:
        return ()
    keep = find_non_dominated(objective_matrix(candidates, objectives))
    return sort_points((candidates[i] for i in keep), objectives)


def dominates(a: Point, b: Point, objectives: Sequence[str]) -> bool:
    va, vb = np.array(a.vector(objectives)), np.array(b.vector(objectives))
    return bool(np.all(va <= vb) and np.any(va < vb))


def hypervolume(points: Sequence[Point], objectives: Sequence[str], ref: Sequence[float]) -> float:
    """Hypervolume (pymoo) dominated by ``points`` and bounded by the reference point."""
    if not points:
        return 0.0
    indicator = HV(ref_point=np.asarray(ref, dtype=float))
    return float(indicator(objective_matrix(points, objectives)))


def choose(front: Iterable[Point], problem: Problem) -> Point:
    """The feasible point with the lowest error; ties go to the lower cost.

    "Lower cost" is lexicographic over the problem's other objectives in their declared order,
    then the configuration, so the choice is deterministic. Without an ``"error"`` objective the
    first objective plays its role.
    """
    feasible = [p for p in front if problem.feasible(np.array(p.config))]
    if not feasible:
        raise SearchError(
            "no point of the front meets the constraints; loosen them or give the strategy "
            "a larger budget"
        )
    primary = ERROR if ERROR in problem.objectives else problem.objectives[0]
    order = (primary, *(o for o in problem.objectives if o != primary))
    return min(feasible, key=lambda p: (p.vector(order), p.config))


@dataclass(frozen=True)
class SearchResult:
    """What a strategy returns: its Pareto front and the point it picks."""

    strategy: str
    front: tuple[Point, ...]
    """Non-dominated points over ``problem.objectives``, sorted (see `sort_points`)."""
    chosen: Point
    """The feasible front point with the lowest error (see `choose`)."""
    evaluations: int
    """Distinct exact evaluator calls spent (0 with the additive proxy)."""
    uniform: Mapping[str, Point] = field(default_factory=dict)
    """The uniform reference points (``"w8a8"`` ...), evaluated the same way as the front."""
    notes: tuple[str, ...] = ()
    """Anything a user should know about how the result was obtained."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "uniform", MappingProxyType(dict(self.uniform)))
        object.__setattr__(self, "notes", tuple(self.notes))

    def __hash__(self) -> int:
        return hash(
            (
                self.strategy,
                self.front,
                self.chosen,
                self.evaluations,
                tuple(self.uniform.items()),
                self.notes,
            )
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SearchResult):
            return NotImplemented
        return (
            self.strategy,
            self.front,
            self.chosen,
            self.evaluations,
            dict(self.uniform),
            self.notes,
        ) == (
            other.strategy,
            other.front,
            other.chosen,
            other.evaluations,
            dict(other.uniform),
            other.notes,
        )


def make_result(
    strategy: str,
    problem: Problem,
    candidates: Iterable[Point],
    uniform: Mapping[str, Point],
    evaluations: int,
    notes: Sequence[str] = (),
) -> SearchResult:
    """Build a `SearchResult` from every point a strategy evaluated.

    The uniform points join the candidates before the front is taken, so a returned front is
    never dominated by a uniform point (METHODS §8). Raises `InfeasibleError` only if the
    constraints cannot be met at all, and `SearchError` if the strategy found no feasible point.
    """
    evaluated = [*candidates, *uniform.values()]
    front = non_dominated(evaluated, problem.objectives)
    feasible_front = [p for p in front if problem.feasible(np.array(p.config))]
    if not feasible_front:
        problem.check_feasible()
        # Feasible configurations exist but none is on the front: the front's feasible
        # members are the best feasible points among all the evaluated ones.
        feasible = [p for p in evaluated if problem.feasible(np.array(p.config))]
        if not feasible:
            raise SearchError(
                f"strategy {strategy!r} evaluated no configuration that meets the constraints; "
                f"give it a larger budget"
            )
        chosen = choose(non_dominated(feasible, problem.objectives), problem)
    else:
        chosen = choose(feasible_front, problem)
    return SearchResult(
        strategy=strategy,
        front=front,
        chosen=chosen,
        evaluations=evaluations,
        uniform=uniform,
        notes=tuple(notes),
    )


__all__ = [
    "Point",
    "SearchResult",
    "choose",
    "dominates",
    "hypervolume",
    "make_result",
    "non_dominated",
    "objective_matrix",
    "sort_points",
]
