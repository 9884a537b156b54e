"""``mohaq``: MOHAQ's beacon-based NSGA-II (METHODS §5, Rezk et al. 2022).

Plain post-training errors mislead at low bits, and recovering (reconstructing) every candidate
is too costly. So a few candidates become *beacons*: ``beacon_fn(config)`` runs the expensive
recovery for that configuration once and returns a function that evaluates any configuration
starting from the beacon's recovered weights. A candidate whose weight levels lie within
``threshold`` of its nearest beacon — distance ``Σ_l |level_l(x) − level_l(beacon)|``, a level
being the index of the layer's weight bits in its own list of weight widths, highest first —
gets ``min(plain error, error on the beacon's weights)``. A feasible candidate farther than the
threshold from every beacon becomes a new beacon while the beacon budget lasts.

The search itself is `mpqc.search.nsga2` with this estimate as its error. Without a
``beacon_fn`` the estimate is the plain error and the result says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from mpqc.search import nsga2
from mpqc.search.evaluate import Evaluator, Key, config_key, evaluate_uniform
from mpqc.search.pareto import SearchResult, make_result
from mpqc.search.problem import Problem, SearchError

BeaconFn = Callable[[Key], Callable[[Key], float]]
"""Recover ``config`` once; return ``fn(config) -> error`` on the recovered weights."""


@dataclass(frozen=True)
class Options(nsga2.Options):
    """Options of the ``mohaq`` strategy: NSGA-II's, plus the beacons (defaults: MOHAQ code)."""

    beacon_fn: BeaconFn | None = field(
        default=None,
        metadata={"help": "recovers a configuration into a beacon; None: plain errors (= nsga2)"},
    )
    threshold: int = field(
        default=5,
        metadata={"help": "largest weight-level distance at which a beacon's error is used"},
    )
    beacons: int = field(default=4, metadata={"help": "most beacons created"})


def weight_levels(problem: Problem) -> np.ndarray:
    """``(L, Kmax)``: each choice's weight level (index of its weight bits among the layer's
    distinct weight widths, highest first); -1 where a layer has no such choice."""
    levels = np.full((problem.n_layers, int(problem.n_choices.max())), -1, dtype=np.int64)
    for layer, choices in enumerate(problem.choices):
        widths = sorted({p[0] for p in choices}, reverse=True)
        levels[layer, : len(choices)] = [widths.index(p[0]) for p in choices]
    return levels


class Beacons:
    """The beacon set and the error estimate it gives (MOHAQ step 2 and 3)."""

    def __init__(
        self,
        problem: Problem,
        evaluator: Evaluator,
        beacon_fn: BeaconFn,
        threshold: int,
        budget: int,
    ) -> None:
        self.problem, self.evaluator, self.beacon_fn = problem, evaluator, beacon_fn
        self.threshold, self.budget = threshold, budget
        self._levels = weight_levels(problem)
        self.configs: list[Key] = []
        self._level_rows: list[np.ndarray] = []
        self._fns: list[Callable[[Key], float]] = []
        self._errors: dict[tuple[int, Key], float] = {}

    @property
    def calls(self) -> int:
        """Distinct evaluations on beacon weights."""
        return len(self._errors)

    def levels(self, config: np.ndarray) -> np.ndarray:
        return self._levels[np.arange(self.problem.n_layers), config]

    def nearest(self, config: np.ndarray) -> tuple[int, int] | None:
        """``(beacon index, distance)`` of the nearest beacon (earliest on ties), or None."""
        if not self.configs:
            return None
        distances = np.abs(np.array(self._level_rows) - self.levels(config)).sum(axis=1)
        index = int(np.argmin(distances))
        return index, int(distances[index])

    def add(self, config: np.ndarray) -> int:
        key = config_key(config)
        self.configs.append(key)
        self._level_rows.append(self.levels(config))
        self._fns.append(self.beacon_fn(key))
        return len(self.configs) - 1

    def beacon_error(self, beacon: int, config: np.ndarray) -> float:
        key = (beacon, config_key(config))
        if key not in self._errors:
            self._errors[key] = float(self._fns[beacon](key[1]))
        return self._errors[key]

    def errors(self, configs: np.ndarray) -> list[float]:
        """The estimate for each configuration, in order (beacons are created in this order)."""
        plain = self.evaluator.many(configs)
        estimates = []
        for config, error in zip(configs, plain, strict=True):
            near = self.nearest(config)
            if near is None or near[1] > self.threshold:
                if len(self.configs) < self.budget and self.problem.feasible(config):
                    near = (self.add(config), 0)
                else:
                    near = None
            estimates.append(
                error if near is None else min(error, self.beacon_error(near[0], config))
            )
        return estimates


def search(
    problem: Problem, evaluator: Evaluator, options: Options, rng: np.random.Generator
) -> SearchResult:
    """NSGA-II whose errors come from beacons when a ``beacon_fn`` is given."""
    if options.threshold < 0 or options.beacons < 0:
        raise SearchError("mohaq needs threshold >= 0 and beacons >= 0")
    uniform = evaluate_uniform(problem, evaluator)
    errors_of: Callable[[np.ndarray], Sequence[float]]
    if options.beacon_fn is None:
        errors_of, beacons = evaluator.many, None
        notes = [
            "no beacon_fn given: errors are plain "
            + ("exact evaluations" if evaluator.exact else "sensitivity-proxy sums")
            + ", as in nsga2"
        ]
    else:
        beacons = Beacons(problem, evaluator, options.beacon_fn, options.threshold, options.beacons)
        errors_of, notes = beacons.errors, []
    candidates = nsga2.evolve(problem, errors_of, evaluator.exact, options, rng)
    # the uniform points were seeded into the population: report them as estimated there
    archived = {p.config: p for p in candidates}
    uniform = {name: archived.get(p.config, p) for name, p in uniform.items()}
    extra = 0
    if beacons is not None:
        extra = beacons.calls
        notes.append(
            f"{len(beacons.configs)} beacons, {beacons.calls} evaluations on beacon "
            f"weights, threshold {options.threshold}"
        )
    return make_result("mohaq", problem, candidates, uniform, evaluator.calls + extra, notes)
