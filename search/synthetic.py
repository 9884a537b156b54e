"""Synthetic search problems for tests and benchmarks: realistic shapes, known structure.

Layer ``l`` gets a parameter count and a MAC count (log-uniform), and the standard additive
costs of METHODS "Shared notation": ``size = params · w / 8`` bytes, ``bops = MACs · w · a``,
and a toy roofline latency. Its error proxy is ``s_l · (4^-w + 4^-a)`` minus the safest
choice's value, with a log-uniform layer sensitivity ``s_l``, so error rises monotonically as
bits drop, and some layers matter far more than others, as in real networks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mpqc.search.problem import Pair, Problem

DEFAULT_PAIRS: tuple[Pair, ...] = ((8, 8), (4, 8), (4, 4))


def synthetic_problem(
    n_layers: int,
    pairs: Sequence[Pair] = DEFAULT_PAIRS,
    *,
    seed: int = 0,
    size_ratio: float | None = None,
    objectives: tuple[str, ...] = ("error", "size"),
    groups: tuple[tuple[int, ...], ...] = (),
) -> Problem:
    """A random problem; ``size_ratio`` sets a size limit at that fraction of the w8a8 size.

    ``pairs`` must be sorted from high to low precision.
    """
    rng = np.random.default_rng(seed)
    params = np.exp(rng.uniform(np.log(1e3), np.log(1e6), n_layers))
    macs = params * np.exp(rng.uniform(np.log(10), np.log(1e3), n_layers))
    weight = np.exp(rng.uniform(np.log(1e-2), np.log(1e1), n_layers))
    w = np.array([p[0] for p in pairs], dtype=float)
    a = np.array([p[1] for p in pairs], dtype=float)
    size = params[:, None] * w[None, :] / 8
    bops = macs[:, None] * (w * a)[None, :]
    latency = np.maximum(bops / 2e12, size / 1e10) + 2e-6
    damage = 4.0**-w + 4.0**-a
    sensitivity = weight[:, None] * (damage - damage[0])[None, :] * 1e4
    fixed = {"size": float(params.sum() * 0.01), "bops": 0.0, "latency": 1e-5}
    constraints = {}
    if size_ratio is not None:
        eight = pairs.index((8, 8)) if (8, 8) in pairs else 0
        constraints["size"] = float(size[:, eight].sum() + fixed["size"]) * size_ratio
    return Problem(
        layers=tuple(f"layer{i}" for i in range(n_layers)),
        choices=tuple(tuple(pairs) for _ in range(n_layers)),
        costs={"size": tuple(size), "bops": tuple(bops), "latency": tuple(latency)},
        fixed_costs=fixed,
        sensitivity=tuple(sensitivity),
        constraints=constraints,
        objectives=objectives,
        features=np.column_stack([np.log(params), np.log(macs), np.arange(n_layers)]),
        edges=tuple((i, i + 1) for i in range(n_layers - 1)),
        groups=groups,
    )
