"""The bit-width search problem: plain arrays, no graphs, no ONNX.

A `Problem` is what every strategy sees. Layer ``l`` has candidate choices ``choices[l]``
(``(wbits, abits)`` pairs, sorted from the safest/highest precision to the lowest), and every
objective is *additive*: a per-layer, per-choice cost table summed over layers plus a fixed part
for everything the search does not touch. A configuration (`Config`) is one choice index per layer.

Why arrays and indices rather than bit-widths: candidate sets differ between layers (a spec may
run 2-bit weights only on some ops), so an index into the layer's own list is the one encoding
every strategy can share; `pairs()` maps an index vector back to bit-widths.

Tied layers (``groups``) must take the same choice index (residual pairs, inputs of an Add that
share a quantizer). Strategies that work on a genome use `tie_classes()`, `expand()` and
`compress()`, so one gene drives a whole class and a tie can never be broken.

Units: costs are plain floats in whatever unit the producer used; `units` only says how to print
them. The defaults are bytes (``size``), seconds (``latency``), joules (``energy``) and bit-ops
(``bops``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from itertools import pairwise
from types import MappingProxyType

import networkx as nx
import numpy as np

from mpqc.core.bits import Bits
from mpqc.core.errors import MpqcError

Pair = tuple[int, int]
"""``(wbits, abits)``; 32 means float."""

Config = np.ndarray
"""Integer array of choice indices, shape ``(L,)``."""

ERROR = "error"
"""The objective name of the (exact or proxy) error; every other objective is a cost table."""

DEFAULT_UNITS: Mapping[str, str] = MappingProxyType(
    {"size": "B", "latency": "s", "energy": "J", "bops": "BOPs"}
)

FEASIBILITY_RTOL = 1e-9
"""Relative slack when comparing a summed cost with its limit (float sums are not exact)."""


class SearchError(MpqcError):
    """A search was asked for something that does not exist or does not fit the problem."""


class InfeasibleError(SearchError):
    """No configuration meets the constraints; says the cheapest value that can be reached."""

    def __init__(
        self,
        objective: str,
        limit: float,
        cheapest: float,
        units: Mapping[str, str] = DEFAULT_UNITS,
        given: Mapping[str, float] | None = None,
    ) -> None:
        self.objective = objective
        self.limit = float(limit)
        self.cheapest = float(cheapest)
        self.given = dict(given or {})
        wanted = f"max-{objective} {format_value(limit, units.get(objective, ''))}"
        if self.given:
            others = " and ".join(
                f"max-{name} {format_value(value, units.get(name, ''))}"
                for name, value in self.given.items()
            )
            message = (
                f"no configuration meets {wanted} together with {others}: the cheapest "
                f"{objective} reachable under {others} is "
                f"{format_value(cheapest, units.get(objective, ''))}"
            )
        else:
            message = (
                f"no configuration meets {wanted}: the cheapest reachable is "
                f"{format_value(cheapest, units.get(objective, ''))}"
            )
        super().__init__(message)


_SI_PREFIXES = (
    (1e12, "T"),
    (1e9, "G"),
    (1e6, "M"),
    (1e3, "k"),
    (1.0, ""),
    (1e-3, "m"),
    (1e-6, "u"),
    (1e-9, "n"),
    (1e-12, "p"),
)


def format_value(value: float, unit: str = "") -> str:
    """``1.5e6, "B"`` -> ``"1.5 MB"``: three significant digits and an SI prefix."""
    if not math.isfinite(value) or value == 0:
        return f"{value:g} {unit}".rstrip()
    scale, prefix = next(((s, p) for s, p in _SI_PREFIXES if abs(value) >= s), _SI_PREFIXES[-1])
    return f"{value / scale:.3g} {prefix}{unit}".rstrip()


def _frozen_array(values: object, dtype: type) -> np.ndarray:
    array = np.array(values, dtype=dtype)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class Problem:
    """A mixed-precision search problem over ``L`` layers (see the module docstring).

    Equality is identity: a problem holds arrays, and two problems built from the same tables
    are still two problems.
    """

    layers: tuple[str, ...]
    """Layer names in topological order."""
    choices: tuple[tuple[Pair, ...], ...]
    """Per layer, candidate ``(wbits, abits)`` pairs sorted high -> low precision."""
    costs: Mapping[str, tuple[np.ndarray, ...]]
    """Objective name -> per-layer arrays of shape ``(K_l,)``; totals are sums over layers."""
    fixed_costs: Mapping[str, float]
    """Cost of everything not searched (float layers, biases), added to every total."""
    sensitivity: tuple[np.ndarray, ...]
    """Per layer ``(K_l,)`` additive error proxy; higher = more damage."""
    constraints: Mapping[str, float]
    """Objective -> upper bound on its total (fixed part included)."""
    objectives: tuple[str, ...] = (ERROR, "size")
    """What the Pareto front is over, all minimized; ``"error"`` is the evaluator's value."""
    features: np.ndarray | None = None
    """``(L, F)`` per-layer numeric features for learned strategies."""
    edges: tuple[tuple[int, int], ...] = ()
    """Data-flow edges between layer indices."""
    groups: tuple[tuple[int, ...], ...] = ()
    """Layers that must take the same choice index."""
    units: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_UNITS))
    """Objective -> unit, only for messages and reports."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "layers", tuple(str(name) for name in self.layers))
        set_(
            self,
            "choices",
            tuple(tuple(Bits.of(choice) for choice in layer) for layer in self.choices),
        )
        n = len(self.layers)
        if n == 0:
            raise SearchError("a search problem needs at least one layer")
        if len(self.choices) != n:
            raise SearchError(f"{n} layers but {len(self.choices)} choice lists")
        for name, layer in zip(self.layers, self.choices, strict=True):
            if not layer:
                raise SearchError(f"layer {name!r} has no candidate choices")
        set_(
            self,
            "costs",
            MappingProxyType(
                {obj: self._per_layer(obj, tables) for obj, tables in self.costs.items()}
            ),
        )
        set_(self, "sensitivity", self._per_layer("sensitivity", self.sensitivity))
        unknown = set(self.fixed_costs) - set(self.costs)
        if unknown:
            raise SearchError(f"fixed costs for unknown objectives {sorted(unknown)}")
        set_(
            self,
            "fixed_costs",
            MappingProxyType({obj: float(self.fixed_costs.get(obj, 0.0)) for obj in self.costs}),
        )
        set_(
            self,
            "constraints",
            MappingProxyType({obj: float(limit) for obj, limit in self.constraints.items()}),
        )
        for obj in self.constraints:
            if obj not in self.costs:
                raise SearchError(
                    f"constraint on {obj!r}, but the problem only has costs for "
                    f"{sorted(self.costs)}"
                )
        set_(self, "objectives", tuple(self.objectives))
        for obj in self.objectives:
            if obj != ERROR and obj not in self.costs:
                raise SearchError(
                    f"objective {obj!r} is neither 'error' nor one of the costs "
                    f"{sorted(self.costs)}"
                )
        if len(set(self.objectives)) != len(self.objectives) or not self.objectives:
            raise SearchError(f"objectives must be distinct and non-empty, got {self.objectives}")
        if self.features is not None:
            features = _frozen_array(self.features, float)
            if features.ndim != 2 or features.shape[0] != n:
                raise SearchError(f"features must have shape ({n}, F), got {features.shape}")
            set_(self, "features", features)
        set_(self, "edges", tuple((int(u), int(v)) for u, v in self.edges))
        for u, v in self.edges:
            if not (0 <= u < n and 0 <= v < n):
                raise SearchError(f"edge ({u}, {v}) refers to a layer outside 0..{n - 1}")
        set_(self, "groups", tuple(tuple(int(i) for i in g) for g in self.groups))
        for group in self.groups:
            if any(not 0 <= i < n for i in group):
                raise SearchError(f"tied group {group} refers to a layer outside 0..{n - 1}")
            if len({self.choices[i] for i in group}) > 1:
                names = [self.layers[i] for i in group]
                raise SearchError(f"tied layers {names} must have identical candidate lists")
        set_(self, "units", MappingProxyType({**DEFAULT_UNITS, **self.units}))

    def _per_layer(self, what: str, tables: object) -> tuple[np.ndarray, ...]:
        arrays = tuple(_frozen_array(t, float) for t in tables)  # type: ignore[union-attr]
        if len(arrays) != len(self.layers):
            raise SearchError(f"{what}: {len(arrays)} tables for {len(self.layers)} layers")
        for name, layer, array in zip(self.layers, self.choices, arrays, strict=True):
            if array.shape != (len(layer),):
                raise SearchError(
                    f"{what} of layer {name!r} has shape {array.shape}, expected ({len(layer)},)"
                )
            if not np.all(np.isfinite(array)):
                raise SearchError(f"{what} of layer {name!r} has non-finite entries")
        return arrays

    # ----------------------------------------------------------------- shape
    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @cached_property
    def n_choices(self) -> np.ndarray:
        """``(L,)`` number of candidates per layer."""
        return _frozen_array([len(c) for c in self.choices], np.int64)

    @property
    def cost_names(self) -> tuple[str, ...]:
        return tuple(self.costs)

    # ------------------------------------------------------------ the tables
    @staticmethod
    def _padded(arrays: tuple[np.ndarray, ...], width: int) -> np.ndarray:
        table = np.full((len(arrays), width), np.inf)
        for row, array in zip(table, arrays, strict=True):
            row[: len(array)] = array
        table.setflags(write=False)
        return table

    @cached_property
    def _tables(self) -> Mapping[str, np.ndarray]:
        width = int(self.n_choices.max())
        tables = {obj: self._padded(arrays, width) for obj, arrays in self.costs.items()}
        tables[ERROR] = self._padded(self.sensitivity, width)
        return MappingProxyType(tables)

    def cost_table(self, objective: str) -> np.ndarray:
        """``(L, Kmax)`` table of one cost (``"error"``: the sensitivity proxy), +inf padded."""
        try:
            return self._tables[objective]
        except KeyError:
            raise SearchError(
                f"no cost table {objective!r}; the problem has {sorted(self._tables)}"
            ) from None

    def sensitivity_table(self) -> np.ndarray:
        """``(L, Kmax)`` sensitivity proxy, +inf padded."""
        return self._tables[ERROR]

    # ------------------------------------------------------------ evaluation
    def validate(self, config: object) -> Config:
        """Return ``config`` as an int array, or raise `SearchError` saying what is wrong."""
        array = np.asarray(config)
        if array.shape != (self.n_layers,) or not np.issubdtype(array.dtype, np.integer):
            raise SearchError(
                f"a configuration is {self.n_layers} integer choice indices, got "
                f"shape {array.shape} dtype {array.dtype}"
            )
        if np.any(array < 0) or np.any(array >= self.n_choices):
            bad = int(np.flatnonzero((array < 0) | (array >= self.n_choices))[0])
            raise SearchError(
                f"choice {int(array[bad])} out of range for layer {self.layers[bad]!r} "
                f"({self.n_choices[bad]} candidates)"
            )
        for group in self.groups:
            if len({int(array[i]) for i in group}) > 1:
                raise SearchError(f"tied layers {[self.layers[i] for i in group]} differ")
        return array.astype(np.int64)

    def _lookup(self, table: np.ndarray, config: object) -> float | np.ndarray:
        configs = np.asarray(config, dtype=np.int64)
        values = table[np.arange(self.n_layers), configs].sum(axis=-1)
        return float(values) if configs.ndim == 1 else values

    def total(self, objective: str, config: object) -> float | np.ndarray:
        """Total of one cost (fixed part included); ``config`` may also be ``(N, L)``."""
        return self._lookup(self.cost_table(objective), config) + self.fixed_costs[objective]

    def totals(self, config: object) -> dict[str, float]:
        """Every cost total of one configuration."""
        return {obj: self.total(obj, config) for obj in self.costs}  # type: ignore[misc]

    def proxy_error(self, config: object) -> float | np.ndarray:
        """Sum of the sensitivity table; ``config`` may also be ``(N, L)``."""
        return self._lookup(self.sensitivity_table(), config)

    def violations(self, config: object) -> dict[str, float]:
        """Constraint -> amount by which ``config`` exceeds it (only the violated ones)."""
        over = {}
        for obj, limit in self.constraints.items():
            value = self.total(obj, config)
            if value > limit + FEASIBILITY_RTOL * max(abs(limit), 1.0):
                over[obj] = float(value - limit)
        return over

    def feasible(self, config: object) -> bool:
        return not self.violations(config)

    def pairs(self, config: object) -> tuple[Pair, ...]:
        """The ``(wbits, abits)`` of every layer under ``config``."""
        return tuple(
            layer[int(k)] for layer, k in zip(self.choices, np.asarray(config), strict=True)
        )

    # ------------------------------------------------------- special points
    def uniform_configs(self) -> dict[str, Config]:
        """The uniform reference points (METHODS §8): ``{"w8a8": config, "w4a8": ...}``.

        Point ``wXaY`` puts every layer that offers ``(X, Y)`` at it. A layer that does not
        (first/last layers pinned to 8 bit, an op the chip runs only at 8 bit) takes its lowest
        candidate that is at least as precise in both operands, so pinning a few layers does
        not remove the uniform points a user compares against. A pair is skipped when some
        layer has nothing that precise. Safest pairs first, in the order the layers list them.
        """
        pairs = list(dict.fromkeys(p for layer in self.choices for p in layer))
        pairs.sort(key=lambda p: (-p[0], -p[1]))
        configs = {}
        for pair in pairs:
            indices = []
            for layer in self.choices:
                at_least = [k for k, p in enumerate(layer) if p[0] >= pair[0] and p[1] >= pair[1]]
                if not at_least:
                    break
                indices.append(layer.index(pair) if pair in layer else at_least[-1])
            else:
                config = np.array(indices, dtype=np.int64)
                config.setflags(write=False)
                configs[str(Bits.of(pair))] = config
        return configs

    def safest(self) -> Config:
        """Every layer at its highest precision (index 0)."""
        return np.zeros(self.n_layers, dtype=np.int64)

    def cheapest(self) -> Config:
        """Every layer at its lowest precision (last index)."""
        return self.n_choices - 1

    def check_feasible(self) -> None:
        """Raise `InfeasibleError` if no configuration meets all constraints together.

        Constraint ``k`` is checked as "minimize cost ``k`` subject to constraints ``0..k-1``"
        (exact, via the multiple-choice ILP), so the message names the cheapest reachable value
        of the first constraint that cannot be met given the ones before it.
        """
        from mpqc.search.ilp import solve  # the ILP is built on Problem; import at use

        accepted: dict[str, float] = {}
        for obj, limit in self.constraints.items():
            best = solve(self, self.cost_table(obj), accepted)
            if best is None:  # pragma: no cover - accepted limits were met one step earlier
                raise AssertionError("feasible prefix became infeasible")
            cheapest = self.total(obj, best)
            if cheapest > limit + FEASIBILITY_RTOL * max(abs(limit), 1.0):
                raise InfeasibleError(obj, limit, cheapest, self.units, accepted)
            accepted[obj] = limit

    # ---------------------------------------------------------------- ties
    @cached_property
    def tie_classes(self) -> tuple[tuple[int, ...], ...]:
        """Partition of the layers into classes that share one choice (groups merged)."""
        graph = nx.Graph()
        graph.add_nodes_from(range(self.n_layers))
        for group in self.groups:
            graph.add_edges_from(pairwise(group))
        classes = [tuple(sorted(c)) for c in nx.connected_components(graph)]
        return tuple(sorted(classes))

    @cached_property
    def _class_of(self) -> np.ndarray:
        class_of = np.empty(self.n_layers, dtype=np.int64)
        for index, members in enumerate(self.tie_classes):
            class_of[list(members)] = index
        class_of.setflags(write=False)
        return class_of

    @cached_property
    def class_choices(self) -> np.ndarray:
        """``(G,)`` number of candidates of each tie class."""
        return _frozen_array([self.n_choices[c[0]] for c in self.tie_classes], np.int64)

    def class_table(self, table: np.ndarray) -> np.ndarray:
        """A per-layer ``(L, Kmax)`` table summed over each tie class: ``(G, Kmax)``, +inf pad."""
        summed = np.zeros((len(self.tie_classes), table.shape[1]))
        np.add.at(summed, self._class_of, np.where(np.isfinite(table), table, 0.0))
        valid = np.arange(table.shape[1])[None, :] < self.class_choices[:, None]
        return np.where(valid, summed, np.inf)

    def expand(self, genes: object) -> Config:
        """One choice per tie class (``(G,)`` or ``(N, G)``) -> configuration(s)."""
        return np.asarray(genes, dtype=np.int64)[..., self._class_of]

    def compress(self, config: object) -> np.ndarray:
        """Configuration(s) -> one choice per tie class (the inverse of `expand`)."""
        firsts = [c[0] for c in self.tie_classes]
        return np.asarray(config, dtype=np.int64)[..., firsts]

    # ---------------------------------------------------------------- graph
    def graph(self) -> nx.DiGraph:
        """The layers as a data-flow graph: node ``l`` has ``name``, ``choices``, ``features``."""
        graph = nx.DiGraph()
        for index, (name, choices) in enumerate(zip(self.layers, self.choices, strict=True)):
            feats = None if self.features is None else self.features[index]
            graph.add_node(index, name=name, choices=choices, features=feats)
        graph.add_edges_from(self.edges)
        return graph
