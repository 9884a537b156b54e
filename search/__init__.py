"""mpqc.search — the bit-width search problem and its strategies (numpy/scipy/pymoo only).

A strategy is a module exposing a frozen dataclass ``Options`` (its documented options, defaults
from METHODS.md) and ``search(problem, evaluator, options, rng) -> SearchResult``. `run` looks a
strategy up by name, checks the options and the constraints, and calls it::

    result = mpqc.search.run(problem, "ilp", budgets=32)
    result.chosen.config, result.front

Strategy modules are imported on first use, so a strategy's dependencies cost nothing until it
runs.
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType

import numpy as np

from mpqc.search.evaluate import Evaluator, ProxyEvaluator
from mpqc.search.pareto import Point, SearchResult, choose, hypervolume, non_dominated
from mpqc.search.problem import (
    Config,
    InfeasibleError,
    Pair,
    Problem,
    SearchError,
)

# Registered strategies: name -> module. Adding a strategy is one line here.
_STRATEGIES: dict[str, str] = {
    "ilp": "mpqc.search.ilp",
    "greedy": "mpqc.search.greedy",
    "eagl": "mpqc.search.eagl",
    "nsga2": "mpqc.search.nsga2",
    "mohaq": "mpqc.search.mohaq",
    "nemo": "mpqc.search.nemo",
    "haq": "mpqc.search.haq",
    "hago": "mpqc.search.hago",
    "ompq": "mpqc.search.ompq",
}


def strategies() -> list[str]:
    """Names of the registered strategies, sorted."""
    return sorted(_STRATEGIES)


def strategy_module(name: str) -> ModuleType:
    """The module implementing strategy ``name``."""
    try:
        return importlib.import_module(_STRATEGIES[name])
    except KeyError:
        raise SearchError(
            f"unknown search strategy {name!r}; choose one of {', '.join(strategies())}"
        ) from None


def make_options(name: str, **options: object) -> object:
    """The strategy's ``Options`` built from keyword options, rejecting unknown names."""
    options_class = strategy_module(name).Options
    valid = [f.name for f in dataclasses.fields(options_class)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise SearchError(
            f"unknown option(s) {', '.join(unknown)} for strategy {name!r}; "
            f"valid options: {', '.join(valid) or '(none)'}"
        )
    return options_class(**options)


def run(
    problem: Problem,
    strategy: str,
    *,
    evaluator: Evaluator | None = None,
    seed: int = 0,
    **options: object,
) -> SearchResult:
    """Search ``problem`` with ``strategy``; same arguments and seed -> the same result.

    Without an ``evaluator`` the error objective is the problem's additive sensitivity proxy.
    Raises `InfeasibleError` before searching when no configuration meets the constraints.
    """
    module = strategy_module(strategy)
    opts = make_options(strategy, **options)
    problem.check_feasible()
    rng = np.random.default_rng(seed)
    return module.search(problem, evaluator or ProxyEvaluator(problem), opts, rng)


__all__ = [
    "Config",
    "Evaluator",
    "InfeasibleError",
    "Pair",
    "Point",
    "Problem",
    "ProxyEvaluator",
    "SearchError",
    "SearchResult",
    "choose",
    "hypervolume",
    "make_options",
    "non_dominated",
    "run",
    "strategies",
    "strategy_module",
]
