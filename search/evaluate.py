"""Error evaluators: the exact, expensive one and the free additive proxy, one interface.

The exact evaluator wraps ``fn(config: tuple[int, ...]) -> float`` (error, lower is better;
typically: quantize per ``config``, run onnxruntime on held-out data, return a metric). It is the
costly call of every search, so it is memoized by the configuration tuple, counted, and batched
through a `concurrent.futures.Executor` when one is given: a ``ProcessPoolExecutor`` on one
machine, a Dask ``Client.get_executor()`` on a cluster. ``executor.map`` keeps input order, so
the results do not depend on the executor. ``fn`` must be picklable for a process pool.

`ProxyEvaluator` sums the problem's sensitivity table. It costs nothing, so its ``calls`` stay 0:
``calls`` counts exact evaluations only, the budget a strategy reports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from types import MappingProxyType

import numpy as np

from mpqc.search.pareto import Point
from mpqc.search.problem import ERROR, Problem

Key = tuple[int, ...]


def config_key(config: object) -> Key:
    """The hashable form of a configuration: a tuple of Python ints."""
    return tuple(np.asarray(config, dtype=np.int64).ravel().tolist())


class Evaluator:
    """Memoized, counted, optionally parallel exact error ``fn(config) -> float``.

    A NaN result (a broken quantized model) counts as ``+inf`` error: worst, never chosen.
    """

    exact = True

    def __init__(
        self,
        fn: Callable[[Key], float],
        executor: Executor | None = None,
        on_evaluated: Callable[[int], None] | None = None,
    ) -> None:
        self.fn = fn
        self.executor = executor
        #: Told how many new configurations each batch evaluated (progress for a person waiting).
        self.on_evaluated = on_evaluated
        self._cache: dict[Key, float] = {}

    @property
    def calls(self) -> int:
        """Distinct exact evaluations so far."""
        return len(self._cache)

    @property
    def cache(self) -> Mapping[Key, float]:
        """Every configuration evaluated so far -> its error (read-only view)."""
        return MappingProxyType(self._cache)

    def __call__(self, config: object) -> float:
        return self.many([config])[0]

    def many(self, configs: Iterable[object]) -> list[float]:
        """Errors of ``configs`` in order; each new distinct configuration is evaluated once."""
        keys = [config_key(c) for c in configs]
        missing = list(dict.fromkeys(k for k in keys if k not in self._cache))
        if missing:
            if self.executor is None:
                values = [self.fn(k) for k in missing]
            else:
                values = list(self.executor.map(self.fn, missing))
            for key, value in zip(missing, values, strict=True):
                value = float(value)
                self._cache[key] = math.inf if math.isnan(value) else value
            if self.on_evaluated is not None:
                self.on_evaluated(len(missing))
        return [self._cache[k] for k in keys]


class ProxyEvaluator(Evaluator):
    """The additive sensitivity proxy behind the `Evaluator` interface (free, never counted)."""

    exact = False

    def __init__(self, problem: Problem) -> None:
        super().__init__(fn=problem.proxy_error)
        self.problem = problem

    @property
    def calls(self) -> int:
        return 0

    def many(self, configs: Iterable[object]) -> list[float]:
        array = np.asarray([config_key(c) for c in configs], dtype=np.int64)
        if array.size == 0:
            return []
        return [float(v) for v in np.atleast_1d(self.problem.proxy_error(array))]


def evaluate_points(
    problem: Problem, evaluator: Evaluator, configs: Sequence[object]
) -> list[Point]:
    """`Point`s over ``problem.objectives`` for ``configs`` (one batched evaluator call)."""
    array = np.asarray([config_key(c) for c in configs], dtype=np.int64).reshape(
        len(configs), problem.n_layers
    )
    columns: dict[str, Sequence[float]] = {}
    for name in problem.objectives:
        if name == ERROR:
            columns[name] = evaluator.many(array)
        else:
            columns[name] = np.atleast_1d(problem.total(name, array)).tolist()
    return [
        Point(
            config=config_key(row),
            objectives={name: columns[name][i] for name in problem.objectives},
            exact=evaluator.exact,
        )
        for i, row in enumerate(array)
    ]


def evaluate_uniform(problem: Problem, evaluator: Evaluator) -> dict[str, Point]:
    """The uniform reference points (METHODS §8), evaluated like any candidate."""
    uniform = problem.uniform_configs()
    points = evaluate_points(problem, evaluator, list(uniform.values()))
    return dict(zip(uniform, points, strict=True))


__all__ = [
    "Evaluator",
    "Key",
    "ProxyEvaluator",
    "config_key",
    "evaluate_points",
    "evaluate_uniform",
]
