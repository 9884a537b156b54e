"""A numpy graph network that maps a search problem to one choice per layer.

This is the policy of NEMO's neural species (METHODS.md §6). Its weights are
evolved, never trained by gradients, so only the forward pass exists here.

Why this shape:

* The genome must not depend on the number of layers or on how many choices a
  layer has, or an evolved policy could not be applied to another workload
  (transfer). So the network never emits "K logits per node". It builds a node
  embedding by message passing and then *scores each candidate choice* with a
  small head that reads the node embedding and a descriptor of that choice
  (its bits, its cost relative to the layer's safest choice, its sensitivity).
  The argmax over a layer's scores is its choice; ties go to the lower index,
  i.e. the higher precision.
* Message passing uses mean aggregation over the undirected neighbourhood
  (producers and consumers alike) plus a separate self term, 2 rounds, hidden
  32, tanh, with a residual update ``h <- h + tanh(...)``. The residual keeps a
  node's own features in its embedding whatever its neighbourhood looks like,
  which is what lets NEMO find and transfer the rule of the transfer test's
  graph family (evolve on 24 nodes, apply to 40; seed counts in
  bench/RESULTS.md §3b).
* Every input is normalized within its problem (feature columns min-max over
  layers, costs as fractions), so graphs of the same family but different size
  present the network with inputs on the same scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EncodingMismatchError", "GraphEncoding", "GraphPolicy", "encode_problem"]

_BITS_SCALE = np.log2(32.0)


class EncodingMismatchError(ValueError):
    """A policy was applied to a problem whose inputs do not have the policy's widths."""


@dataclass(frozen=True)
class GraphEncoding:
    """Everything a :class:`GraphPolicy` reads from one problem, as arrays.

    ``choice_inputs`` row ``r`` describes choice ``r - offsets[l]`` of layer
    ``l = owner[r]``; rows are grouped by layer in order.
    """

    node_inputs: np.ndarray  # (L, node_width)
    choice_inputs: np.ndarray  # (sum K_l, choice_width)
    owner: np.ndarray  # (sum K_l,) layer index of each choice row
    offsets: np.ndarray  # (L + 1,) start row of each layer's choices
    mean_neighbours: np.ndarray  # (L, L) row-normalized undirected adjacency
    tie_classes: tuple[tuple[int, ...], ...]  # layers that must share one choice
    cost_keys: tuple[str, ...]

    @property
    def node_width(self) -> int:
        return self.node_inputs.shape[1]

    @property
    def choice_width(self) -> int:
        return self.choice_inputs.shape[1]


def _minmax_columns(x: np.ndarray) -> np.ndarray:
    """Scale each column to [0, 1] over the rows; constant columns become 0."""
    lo = x.min(axis=0, keepdims=True)
    span = x.max(axis=0, keepdims=True) - lo
    return np.where(span > 0, (x - lo) / np.where(span > 0, span, 1.0), 0.0)


def _safe_ratio(num: np.ndarray, den: float | np.ndarray) -> np.ndarray:
    den = np.asarray(den, dtype=float)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def encode_problem(problem) -> GraphEncoding:
    """Build the policy inputs of ``problem``.

    Node inputs: the problem's feature columns (min-max over layers) followed,
    per cost objective, by the layer's share of the model total at its safest
    choice (scaled so the largest layer is 1).
    Choice inputs: log2 weight and activation bits (scaled to [0, 1]), per cost
    objective the choice's cost as a fraction of the layer's safest choice, and
    the choice's sensitivity as a fraction of the largest sensitivity entry.
    """
    n_layers = len(problem.layers)
    cost_keys = tuple(sorted(problem.costs))
    columns = []
    if problem.features is not None and np.size(problem.features):
        features = np.asarray(problem.features, dtype=float).reshape(n_layers, -1)
        columns.append(_minmax_columns(features))
    for key in cost_keys:
        safest = np.array([float(table[0]) for table in problem.costs[key]])
        columns.append(_safe_ratio(safest, safest.max(initial=0.0))[:, None])
    node_inputs = np.hstack(columns) if columns else np.zeros((n_layers, 0))

    sens_scale = max((float(np.max(s)) for s in problem.sensitivity if np.size(s)), default=0.0)
    rows, owner, offsets = [], [], [0]
    for layer, pairs in enumerate(problem.choices):
        bits = np.log2(np.asarray([p[:2] for p in pairs], dtype=float)) / _BITS_SCALE
        parts = [bits]
        for key in cost_keys:
            table = np.asarray(problem.costs[key][layer], dtype=float)
            parts.append(_safe_ratio(table, table[0])[:, None])
        sens = np.asarray(problem.sensitivity[layer], dtype=float)
        parts.append(_safe_ratio(sens, sens_scale)[:, None])
        rows.append(np.hstack(parts))
        owner.extend([layer] * len(pairs))
        offsets.append(offsets[-1] + len(pairs))

    adjacency = np.zeros((n_layers, n_layers))
    for src, dst in problem.edges:
        if src != dst:
            adjacency[src, dst] = adjacency[dst, src] = 1.0
    degree = adjacency.sum(axis=1, keepdims=True)
    mean_neighbours = _safe_ratio(adjacency, degree)
    return GraphEncoding(
        node_inputs=node_inputs,
        choice_inputs=np.vstack(rows),
        owner=np.asarray(owner, dtype=np.intp),
        offsets=np.asarray(offsets, dtype=np.intp),
        mean_neighbours=mean_neighbours,
        tie_classes=problem.tie_classes,
        cost_keys=cost_keys,
    )


@dataclass(frozen=True)
class GraphPolicy:
    """The architecture of the policy network; a genome is its flat weight vector.

    Layers, in genome order: input projection ``node_width -> hidden``; per
    round (residual) a self map, a neighbour map (both ``hidden -> hidden``) and a bias;
    the choice head ``hidden -> hidden`` (node part), ``choice_width -> hidden``
    (choice part), a bias and the output vector ``hidden -> 1``.
    """

    node_width: int
    choice_width: int
    hidden: int = 32
    rounds: int = 2

    def _shapes(self) -> list[tuple[int, ...]]:
        h = self.hidden
        shapes: list[tuple[int, ...]] = [(self.node_width, h), (h,)]
        for _ in range(self.rounds):
            shapes += [(h, h), (h, h), (h,)]
        shapes += [(h, h), (self.choice_width, h), (h,), (h,)]
        return shapes

    @property
    def size(self) -> int:
        return sum(int(np.prod(s)) for s in self._shapes())

    @classmethod
    def for_encoding(
        cls, encoding: GraphEncoding, hidden: int = 32, rounds: int = 2
    ) -> GraphPolicy:
        return cls(encoding.node_width, encoding.choice_width, hidden, rounds)

    def initial_genome(self, rng: np.random.Generator) -> np.ndarray:
        """Weights ~ N(0, 1/fan_in), biases 0: tanh units start unsaturated."""
        parts = []
        for shape in self._shapes():
            if len(shape) == 1:
                parts.append(np.zeros(shape))
            else:
                parts.append(rng.normal(0.0, 1.0 / np.sqrt(max(shape[0], 1)), size=shape))
        return np.concatenate([p.ravel() for p in parts])

    def _unpack(self, genome: np.ndarray) -> list[np.ndarray]:
        if genome.shape != (self.size,):
            raise EncodingMismatchError(
                f"genome has {genome.shape} weights, this policy needs ({self.size},)"
            )
        out, start = [], 0
        for shape in self._shapes():
            n = int(np.prod(shape))
            out.append(genome[start : start + n].reshape(shape))
            start += n
        return out

    def scores(self, genome: np.ndarray, encoding: GraphEncoding) -> np.ndarray:
        """One score per (layer, choice) row of ``encoding.choice_inputs``."""
        if (encoding.node_width, encoding.choice_width) != (self.node_width, self.choice_width):
            raise EncodingMismatchError(
                f"problem encodes to widths ({encoding.node_width}, {encoding.choice_width}) "
                f"but the policy was evolved for ({self.node_width}, {self.choice_width}); "
                "transfer needs the "
                "same feature columns and cost objectives"
            )
        weights = iter(self._unpack(genome))
        w_in, b_in = next(weights), next(weights)
        h = np.tanh(encoding.node_inputs @ w_in + b_in)
        for _ in range(self.rounds):
            w_self, w_nbr, b = next(weights), next(weights), next(weights)
            h = h + np.tanh(h @ w_self + (encoding.mean_neighbours @ h) @ w_nbr + b)
        w_node, w_choice, b_head, v_out = next(weights), next(weights), next(weights), next(weights)
        z = np.tanh(h[encoding.owner] @ w_node + encoding.choice_inputs @ w_choice + b_head)
        return z @ v_out

    def decide(self, genome: np.ndarray, encoding: GraphEncoding) -> np.ndarray:
        """Choice index per layer: the argmax of its scores, ties to the safest (lowest index).

        Tied layers share one choice: their scores are summed per candidate (tied layers
        have identical candidate lists) and the class takes the argmax.
        """
        flat = self.scores(genome, encoding)
        n_layers = len(encoding.offsets) - 1
        width = int(np.diff(encoding.offsets).max())
        table = np.full((n_layers, width), -np.inf)
        table[encoding.owner, np.arange(len(flat)) - encoding.offsets[encoding.owner]] = flat
        config = np.empty(n_layers, dtype=np.int64)
        for members in encoding.tie_classes:
            config[list(members)] = int(np.argmax(table[list(members)].sum(axis=0)))
        return config
