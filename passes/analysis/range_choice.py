"""The range estimator chosen by the damage it does to the model's output: one for the whole
model (``calibrate{method=best}``, ``choose_estimator``) or one per activation
(``calibrate{method=auto}``, ``choose_ranges`` then ``accept_jointly``).

``best`` asks the cheap question: with every layer at w8a8, which estimator's ranges, taken for
every tensor where they differ materially from minmax, give the least output error? Three
whole-model runs, ties to minmax, so on the calibration samples it is never worse than minmax.

No one estimator wins everywhere: minmax keeps a tensor's outliers exact and spends the 8-bit grid
on them, percentile and MSE clip them to resolve the bulk better. Which costs the model less depends
on what the layers downstream do with the outliers, so it is measured: each layer whose quantizers
read a tensor runs at w8a8 alone (the evaluator, on calibration samples, exactly as lowered), once
per candidate range of that tensor, and the tensor keeps the candidate with the least summed output
error. The ranges cost the same at run time (one scale and zero point either way), so this is a
pure accuracy choice. Only tensors whose candidates differ materially from the minmax range (more
than ``MATERIAL`` of its width) are compared; the rest keep minmax without a run.

One layer's error depends on the ranges of all the tensors its quantizers read (its input and, when
fused, its output). The tensors compared are therefore split into rounds in which no layer reads
two of them: within a round each error changes with one tensor's range only, and every other tensor
stays at its minmax range. Ties keep the earlier candidate (minmax, then percentile, then mse).

Each of those choices is right alone, yet clipped ranges add up: several clips that each lower the
output error when their readers run alone can together move the output further than minmax does
(bench/RESULTS.md §6a, MiniLM). So the clips are then judged together, on what ships: every layer at
w8a8 (``accept_jointly``). Ordered by how much each one gained alone, the clipped tensors are
accepted as the prefix of that order whose whole-model error is least, the empty prefix (minmax
everywhere) included; so on the calibration samples the choice is never worse than minmax. The
prefixes tried halve in length (n, n/2, n/4, ..., 1, 0): a handful of whole-model runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from mpqc.passes.lib.evaluator import Evaluator

__all__ = [
    "CANDIDATES",
    "MATERIAL",
    "Choice",
    "Joint",
    "accept_jointly",
    "choose_estimator",
    "choose_ranges",
    "material_candidates",
]

#: The estimators compared, in order of preference on ties.
CANDIDATES = ("minmax", "percentile", "mse")
#: A candidate range is compared only if its width differs from minmax's by more than this fraction.
MATERIAL = 0.05

Range = tuple[float, float]


@dataclasses.dataclass(frozen=True)
class Choice:
    """The estimator kept for one tensor and the output error each candidate measured."""

    method: str
    damage: Mapping[str, float]

    @property
    def gain(self) -> float:
        """How much less output error the kept range measured than minmax's (0 for minmax)."""
        return self.damage["minmax"] - self.damage[self.method]


@dataclasses.dataclass(frozen=True)
class Joint:
    """What ``accept_jointly`` measured: the whole model's error (every layer at w8a8) with the
    first k clipped tensors of the gain order accepted, per k tried, and the k kept."""

    errors: Mapping[int, float]
    kept: int


def material_candidates(ranges: Mapping[str, Range]) -> dict[str, Range]:
    """``ranges`` (method -> (lo, hi), minmax first) without the candidates whose range is within
    ``MATERIAL`` of the minmax width or repeats an earlier one; minmax is always kept."""
    lo, hi = ranges["minmax"]
    width = hi - lo
    kept = {"minmax": ranges["minmax"]}
    for method, (c_lo, c_hi) in ranges.items():
        if method in kept or width <= 0.0:
            continue
        if abs(width - (c_hi - c_lo)) <= MATERIAL * width:
            continue
        if any(np.isclose([c_lo, c_hi], other).all() for other in kept.values()):
            continue
        kept[method] = (c_lo, c_hi)
    return kept


def choose_ranges(
    evaluator: Evaluator,
    candidates: Mapping[str, Mapping[str, Range]],
    advance: Callable[[int], None] | None = None,
) -> dict[str, Choice]:
    """For each tensor of ``candidates`` (tensor -> method -> range, as ``material_candidates``
    keeps them, with more than one method) that some layer's quantizer reads, the estimator whose
    range gives the least output error (module docstring). ``evaluator`` quantizes every tensor on
    its minmax range and is restored to it on return."""
    readers: dict[str, list[str]] = {}
    for layer in evaluator.layers:
        for tensor in evaluator.tensors_read(layer):
            if tensor in candidates:
                readers.setdefault(tensor, []).append(layer)
    if not readers:
        return {}
    baseline = _errors(evaluator, sorted({r for rs in readers.values() for r in rs}), advance)
    damage = {
        tensor: {"minmax": sum(baseline[layer] for layer in layers)}
        for tensor, layers in readers.items()
    }
    try:
        for round_ in _rounds(evaluator, readers):
            for method in CANDIDATES[1:]:
                tried = [t for t in round_ if method in candidates[t]]
                if not tried:
                    continue
                evaluator.set_ranges({t: candidates[t][method] for t in tried})
                layers = sorted({layer for t in tried for layer in readers[t]})
                errors = _errors(evaluator, layers, advance)
                for tensor in tried:
                    damage[tensor][method] = sum(errors[layer] for layer in readers[tensor])
    finally:
        evaluator.set_ranges({})
    return {
        tensor: Choice(min(measured, key=lambda m: (measured[m], CANDIDATES.index(m))), measured)
        for tensor, measured in damage.items()
    }


def _rounds(evaluator: Evaluator, readers: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """The tensors in groups where no layer reads two of them (greedy, in the order given)."""
    rounds: list[tuple[list[str], set[str]]] = []
    for tensor, layers in readers.items():
        for members, busy in rounds:
            if busy.isdisjoint(layers):
                members.append(tensor)
                busy.update(layers)
                break
        else:
            rounds.append(([tensor], set(layers)))
    return [members for members, _ in rounds]


def _errors(
    evaluator: Evaluator, layers: Sequence[str], advance: Callable[[int], None] | None
) -> dict[str, float]:
    """Each layer's output error at w8a8 alone, the others float."""
    errors = evaluator.errors([{layer: (8, 8)} for layer in layers], "mse", advance)
    return dict(zip(layers, errors, strict=True))


def accept_jointly(
    evaluator: Evaluator,
    choices: Mapping[str, Choice],
    candidates: Mapping[str, Mapping[str, Range]],
    advance: Callable[[int], None] | None = None,
) -> tuple[dict[str, Choice], Joint]:
    """``choices`` with the clipped ranges the whole model's error does not confirm set back to
    minmax (module docstring), and what was measured. ``evaluator`` quantizes every tensor on its
    minmax range and is restored to it on return."""
    clipped = sorted(
        (tensor for tensor, choice in choices.items() if choice.method != "minmax"),
        key=lambda tensor: -choices[tensor].gain,
    )
    lengths = sorted({0, *_halvings(len(clipped))}, reverse=True)
    uniform = _uniform(evaluator)
    errors: dict[int, float] = {}
    try:
        for length in lengths:
            evaluator.set_ranges({t: candidates[t][choices[t].method] for t in clipped[:length]})
            errors[length] = evaluator.error(uniform)
            if advance is not None:
                advance(1)
    finally:
        evaluator.set_ranges({})
    kept = min(errors, key=lambda length: (errors[length], length))
    rejected = set(clipped[kept:])
    joined = {
        tensor: Choice("minmax", choice.damage) if tensor in rejected else choice
        for tensor, choice in choices.items()
    }
    return joined, Joint(errors, kept)


def _halvings(n: int) -> list[int]:
    """n, n/2, n/4, ..., 1 (rounded up)."""
    lengths = []
    while n >= 1:
        lengths.append(n)
        n = (n + 1) // 2 if n > 1 else 0
    return lengths


def choose_estimator(
    evaluator: Evaluator,
    candidates: Mapping[str, Mapping[str, Range]],
    advance: Callable[[int], None] | None = None,
) -> tuple[str, dict[str, float]]:
    """The estimator of ``CANDIDATES`` whose ranges (where ``candidates``, as
    ``material_candidates`` keeps them, has one; minmax elsewhere) give the whole model at w8a8
    the least output error, ties to the earlier one, and each one's error. ``evaluator``
    quantizes every tensor on its minmax range and is restored to it on return."""
    uniform = _uniform(evaluator)
    errors: dict[str, float] = {}
    try:
        for method in CANDIDATES:
            evaluator.set_ranges(
                {t: ranges[method] for t, ranges in candidates.items() if method in ranges}
            )
            errors[method] = evaluator.error(uniform)
            if advance is not None:
                advance(1)
    finally:
        evaluator.set_ranges({})
    return min(errors, key=lambda m: (errors[m], CANDIDATES.index(m))), errors


def _uniform(evaluator: Evaluator) -> dict[str, tuple[int, int]]:
    """Every layer at w8a8: what the ranges are judged in, the configuration most layers ship."""
    return {layer: (8, 8) for layer in evaluator.layers}
