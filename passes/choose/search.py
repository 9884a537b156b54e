"""``search``: choose each layer's bits from its costs and sensitivities under the user's budgets.

This is where the IR meets ``mpqc.search``, which knows nothing of ONNX: the pass turns annotated
layers into a ``Problem`` (candidate pairs per layer from ``mpqc.cost``, additive damage from
``mpqc.sens.<metric>``, per-layer features and the layer graph for learned strategies, budgets
resolved against the spec's reference configuration), runs the chosen strategy, and writes the
answer back: ``mpqc.bits`` on every layer and the whole front as ``mpqc.pareto``.

Strategies defined by exact evaluation (MOHAQ's inference-only error, HAQ's reward, HAGO's trials,
NEMO's task objective, NSGA-II as MOHAQ runs it) score whole configurations with the configurable
evaluator — one onnxruntime session over the fake-quantized model, the numbers ``lower-qdq`` ships —
on the calibration samples; the others optimize the additive sensitivity proxy, which is what their
papers do (HAWQ-V3's ILP, AIMET's phase 1, EAGL's knapsack, OMPQ's linear program). ``exact``
overrides the choice. MOHAQ's beacons are configurations run through ``recover`` (GPTQ and bias
correction from float-input statistics observed once, ``passes/recover/beacons.py``), whose
neighbours are scored on the recovered weights.

Budgets arrive as text — ``0.25x`` (a ratio of the reference: float where the chip runs float,
otherwise w8a8), ``3MB``, ``2ms``, ``5mJ``, ``2G`` BOPs — and are resolved here because only after
the cost pass is the reference known.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Literal

import numpy as np
import onnx_ir as ir

from mpqc import search as msearch
from mpqc.core.bits import FLOAT_BITS, Bits
from mpqc.ir import annotations
from mpqc.ir.layers import Layer, quantizable_layers
from mpqc.passes.choose.budget import COST_FIELDS, limits, offered_pairs, resolve_budget
from mpqc.passes.choose.explain import explain_choice
from mpqc.passes.choose.latency_cap import REFERENCE, ForcedSlowdownError, capped
from mpqc.passes.choose.layer_graph import layer_edges, layer_features
from mpqc.passes.infra.base import Pass, PassInputError, option
from mpqc.passes.infra.registry import register
from mpqc.passes.lib.evaluator import Evaluator
from mpqc.passes.lib.layout import WeightLayout
from mpqc.passes.recover.beacons import BeaconRecovery
from mpqc.search.mohaq import BeaconFn
from mpqc.search.problem import format_value

__all__ = ["SearchPass", "resolve_budget"]


def _damage(scores: Mapping[str, float], pair: tuple, layer: Layer, metric: str) -> float:
    """Additive damage of a pair: a joint score if measured, else weight part + activation part
    (``a8``, or ``adyn`` for a dynamic range)."""
    bits = Bits.of(pair)
    if str(bits) in scores:
        return float(scores[str(bits)])
    w_key, a_key = f"w{bits.w}", bits.activation_key
    if w_key not in scores:
        raise PassInputError(
            f"mpqc.sens.{metric} of layer '{layer.name}' has no score for {w_key}: "
            "run the sensitivity pass with these bits"
        )
    activation = float(scores.get(a_key, 0.0)) if layer.activation is not None else 0.0
    return float(scores[w_key]) + activation


#: Strategies whose method scores whole configurations exactly (METHODS.md §1, §2, §5, §6).
_EXACT_STRATEGIES = frozenset({"mohaq", "haq", "hago", "nemo", "nsga2"})


def _config_error(
    evaluator: Evaluator, layers: tuple[str, ...], choices, measure: str, config: tuple[int, ...]
) -> float:
    """Exact error of a configuration given as choice indices (module-level, so it pickles)."""
    return evaluator.error(
        {name: choices[i][c] for i, (name, c) in enumerate(zip(layers, config, strict=True))},
        measure,
    )


def _beacon(
    recovery: BeaconRecovery,
    layers: tuple[str, ...],
    choices,
    measure: str,
    config: tuple[int, ...],
) -> Callable[[tuple[int, ...]], float]:
    """A MOHAQ beacon: ``config`` recovered once, then any configuration's error on its
    recovered weights."""
    evaluator = recovery.evaluator(
        {name: choices[i][c] for i, (name, c) in enumerate(zip(layers, config, strict=True))}
    )
    return functools.partial(_config_error, evaluator, layers, choices, measure)


@register
class SearchPass(Pass):
    name = "search"
    reads = frozenset({annotations.COST, annotations.MODEL_COST, annotations.SENSITIVITY})
    #: The exact evaluator quantizes activations on their calibrated ranges.
    may_read = frozenset({annotations.CALIB_RANGE, annotations.SENSITIVITY_DETAIL})
    writes = frozenset({annotations.BITS, annotations.PARETO, annotations.REPORT})
    preserves = frozenset({annotations.ALL})

    @dataclasses.dataclass(frozen=True)
    class Options:
        strategy: str = option("ilp", "search strategy: " + ", ".join(msearch.strategies()))
        metric: str = option("output", "sensitivity metric read from mpqc.sens.<metric>")
        objectives: tuple[str, ...] = option(("error", "size"), "what the Pareto front is over")
        pin_ends: bool = option(
            True,
            "keep the first and last compute layers at 8 bits or more (HAQ, HAWQ-V3) unless the "
            "budget is out of reach with them",
        )
        exact: Literal["auto", "always", "never"] = option(
            "auto",
            "score configurations with the evaluator on calibration data "
            "(auto: for mohaq, haq, hago, nemo, nsga2)",
        )
        measure: Literal["mse", "kl", "flips"] = option(
            "mse", "output error the exact evaluation measures"
        )
        samples: int = option(32, "calibration samples an exact evaluation runs")
        latency_cap: bool = option(
            True,
            "under budgets that do not name latency, refuse points predicted slower than "
            "uniform w8a8 (passes/choose/latency_cap.py)",
        )
        strategy_options: object = option(
            None, "the strategy's own options (None: its defaults), listed under 'with <strategy>'"
        )

        def __post_init__(self) -> None:
            declared = msearch.strategy_module(self.strategy).Options
            if self.strategy_options is None:
                object.__setattr__(self, "strategy_options", declared())
            elif type(self.strategy_options) is not declared:
                raise ValueError(
                    f"strategy_options must be {self.strategy}'s Options, "
                    f"got {type(self.strategy_options).__qualname__}"
                )

    forwards = ("strategy", "strategy_options")

    @classmethod
    def components(cls) -> dict[str, type]:
        return {name: msearch.strategy_module(name).Options for name in msearch.strategies()}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        layers = self.searched_layers(model)
        pinned = self.pinned(layers)
        try:
            problem, latency_cap = self.constrained(model, layers, pinned)
        except msearch.InfeasibleError as pinned_out:
            if not pinned:
                raise
            # The pins are a default, not a constraint: released when the budget needs them,
            # including when it needs them to stay as fast as uniform w8a8.
            problem, latency_cap = self.constrained(model, layers, set())
            pinned = set()
            self.context.note(
                "search: released the pinned first and last layers to meet the budget "
                + (
                    f"without a slower model (with them the fastest is predicted "
                    f"{pinned_out.cheapest / pinned_out.limit:.2f}x uniform {REFERENCE})"
                    if isinstance(pinned_out, ForcedSlowdownError)
                    else f"({pinned_out})"
                )
            )
        if latency_cap is not None:
            self.context.note(
                f"search: no --max-latency: held to uniform {REFERENCE}'s predicted latency, "
                f"{format_value(latency_cap, 's')} (--max-latency allows a slower model)"
            )
        evaluator = self._exact_evaluator(model, problem) if self._wants_exact() else None
        chosen_options = self.options.strategy_options
        options = {
            field.name: getattr(chosen_options, field.name)
            for field in dataclasses.fields(chosen_options)
        }
        if (
            evaluator is not None
            and self.options.strategy == "mohaq"
            and options["beacon_fn"] is None
            and options["beacons"] != 0
        ):
            options["beacon_fn"] = self._beacon_fn(model, problem)
        result = msearch.run(
            problem, self.options.strategy, evaluator=evaluator, seed=self.context.seed, **options
        )
        chosen = result.chosen
        for layer, pair in zip(layers, problem.pairs(chosen.config), strict=True):
            annotations.BITS.set(layer.node, annotations.layer_bits(pair))
        self._explain(model, problem, layers, chosen.config, pinned)
        front = self._front_json(problem, layers, result)
        front["metric"] = self.options.metric
        front["pinned"] = sorted(layers[i].name for i in pinned)
        if latency_cap is not None:
            front["latency_cap"] = {
                "reference": str(REFERENCE),
                "latency_s": latency_cap,
                "chosen_latency_s": float(problem.total("latency", chosen.config)),
            }
        annotations.PARETO.set(model, front)
        return ir.passes.PassResult(model, modified=True)

    def _explain(
        self,
        model: ir.Model,
        problem: msearch.Problem,
        layers: list[Layer],
        config: np.ndarray,
        pinned: set[int],
    ) -> None:
        """The search's section of ``mpqc.report``: why each layer got its bits (``explain.py``)."""
        account = explain_choice(
            problem,
            [int(k) for k in config],
            [layer.node.op_type for layer in layers],
            {layers[i].name for i in pinned},
            self.options.strategy,
            self.options.metric,
            self._left_out(layers),
        )
        self.report(model, account)

    def _left_out(self, layers: list[Layer]) -> dict[str, list[Bits]]:
        """Per layer, the priced pairs sensitivity analysis left out as unable to be chosen."""
        key = annotations.detail_key(self.options.metric)
        left_out = {}
        for layer in layers:
            listed = (key.get(layer.node) or {}).get("choosable")
            if listed is not None:
                table = annotations.COST.get(layer.node) or {}
                left_out[layer.name] = [p for p in offered_pairs(table) if str(p) not in listed]
        return left_out

    def _wants_exact(self) -> bool:
        if self.options.exact == "always":
            if self.context.calibration is None:
                raise PassInputError(
                    "search{exact=always} needs calibration data", field="calibration"
                )
            return True
        return (
            self.options.exact == "auto"
            and self.options.strategy in _EXACT_STRATEGIES
            and self.context.calibration is not None
        )

    def _evaluation_set(
        self, model: ir.Model, problem: msearch.Problem
    ) -> tuple[list[int], list, WeightLayout]:
        """(weight bits to prepare, samples, weight layout) of an exact evaluation."""
        wbits = sorted({p[0] for choices in problem.choices for p in choices if p[0] != FLOAT_BITS})
        # Price and simulate the weight layout the cost pass priced (lower-qdq{block_size} stores
        # it so).
        layout = WeightLayout(
            block_size=int((annotations.MODEL_COST.get(model) or {}).get("block_size", 0))
        )
        return wbits, list(self.context.calibration)[: self.options.samples], layout

    def _beacon_fn(self, model: ir.Model, problem: msearch.Problem) -> BeaconFn:
        """MOHAQ's beacons (METHODS.md §5): ``recover`` a configuration once, score neighbours on
        its weights."""
        wbits, samples, layout = self._evaluation_set(model, problem)
        recovery = BeaconRecovery(model, samples, wbits=wbits, hw=self.context.hw, layout=layout)
        return functools.partial(
            _beacon, recovery, problem.layers, problem.choices, self.options.measure
        )

    def _exact_evaluator(self, model: ir.Model, problem: msearch.Problem) -> msearch.Evaluator:
        wbits, samples, layout = self._evaluation_set(model, problem)
        evaluator = Evaluator(
            model, samples, wbits=wbits, executor=None, spec=self.context.hw, layout=layout
        )
        fn = functools.partial(
            _config_error, evaluator, problem.layers, problem.choices, self.options.measure
        )
        steps = self.context.steps("evaluations")
        return msearch.Evaluator(fn, executor=self.context.executor, on_evaluated=steps.advance)

    @staticmethod
    def searched_layers(model: ir.Model) -> list[Layer]:
        """The layers the search chooses bits for: those the cost pass priced."""
        return [
            layer for layer in quantizable_layers(model.graph) if annotations.COST.has(layer.node)
        ]

    def pinned(self, layers: list[Layer]) -> set[int]:
        """Indices of the layers held at 8 bits or more: the first and last compute layers.

        HAQ and HAWQ-V3 keep the stem that reads the raw input and the classifier at 8 bits;
        embedding lookups are not such layers, and pinning one would pin most of a transformer's
        parameters. Nor are layers inside If/Loop/Scan bodies, which run on the stem's features.
        """
        compute = [
            i
            for i, layer in enumerate(layers)
            if layer.node.op_type != "Gather" and not layer.in_subgraph
        ]
        return {compute[0], compute[-1]} if self.options.pin_ends and compute else set()

    def constrained(
        self, model: ir.Model, layers: list[Layer], pinned: set[int]
    ) -> tuple[msearch.Problem, float | None]:
        """The problem with ``pinned`` held at 8 bits, checked feasible, and the implicit latency
        limit (None without one: ``latency_cap``); raises InfeasibleError (ForcedSlowdownError
        when only a slower model meets the budgets)."""
        problem = self.problem(model, layers, pinned)
        problem.check_feasible()
        return capped(problem) if self.options.latency_cap else (problem, None)

    def problem(
        self, model: ir.Model, layers: list[Layer], pinned: set[int] | None = None
    ) -> msearch.Problem:
        """The search problem over ``layers``, the ``pinned`` ones (default: ``self.pinned``) held
        at 8 bits or more."""
        if not layers:
            raise PassInputError("search: no layer has costs; run the cost pass first")
        totals = annotations.MODEL_COST.get(model) or {}
        key = annotations.sensitivity_key(self.options.metric)
        choices, sensitivity = [], []
        costs: dict[str, list[np.ndarray]] = {name: [] for name in COST_FIELDS}
        pinned = self.pinned(layers) if pinned is None else pinned
        for index, layer in enumerate(layers):
            table = annotations.COST.get(layer.node) or {}
            scores = key.get(layer.node)
            if scores is None:
                raise PassInputError(
                    f"search: layer '{layer.name}' has no mpqc.sens.{self.options.metric}; "
                    f"run sensitivity-{self.options.metric} first"
                )
            # What sensitivity left unmeasured as unable to change the choice (choosable.py): the
            # pairs it did not list are not offered, and a part all listed pairs share adds the
            # same damage to each, counted as 0.
            detail = annotations.detail_key(self.options.metric).get(layer.node) or {}
            scores = {**dict.fromkeys(detail.get("shared", ()), 0.0), **scores}
            # a dynamic range is offered where its damage was measured (it is cheaper than a
            # static one, so without a score the search would take it blind)
            pairs = [p for p in offered_pairs(table) if not p.dynamic or p.activation_key in scores]
            if "choosable" in detail:
                pairs = [p for p in pairs if str(p) in detail["choosable"]]
            if index in pinned:
                eight_or_more = [p for p in pairs if p[0] >= 8 and p[1] >= 8]
                pairs = eight_or_more or pairs[:1]
            choices.append(tuple(pairs))
            sensitivity.append(
                np.array([_damage(scores, p, layer, self.options.metric) for p in pairs])
            )
            for objective, field in COST_FIELDS.items():
                costs[objective].append(
                    np.array([float(table[str(pair)][field]) for pair in pairs])
                )
        fixed = totals.get("fixed", {})
        constraints = limits(self.context.constraints, totals)
        fixed_costs = {
            objective: float(fixed.get(COST_FIELDS[objective], 0.0)) for objective in COST_FIELDS
        }
        objectives = tuple(dict.fromkeys([*self.options.objectives, *constraints]))
        return msearch.Problem(
            layers=tuple(layer.name for layer in layers),
            choices=tuple(choices),
            costs={k: tuple(v) for k, v in costs.items()},
            fixed_costs=fixed_costs,
            sensitivity=tuple(sensitivity),
            constraints=constraints,
            objectives=objectives,
            features=layer_features(model, layers),
            edges=layer_edges(model, layers),
        )

    def _front_json(
        self, problem: msearch.Problem, layers: list[Layer], result
    ) -> dict[str, object]:
        points = []
        for point in result.front:
            pairs = problem.pairs(point.config)
            points.append(
                {
                    "bits": {
                        layer.name: str(Bits(*pair))
                        for layer, pair in zip(layers, pairs, strict=True)
                    },
                    "objectives": dict(point.objectives),
                    "exact": point.exact,
                }
            )
        chosen = result.front.index(result.chosen) if result.chosen in result.front else -1
        return {
            "strategy": result.strategy,
            "objectives": list(problem.objectives),
            "constraints": dict(problem.constraints),
            "points": points,
            "chosen": chosen,
            "chosen_objectives": dict(result.chosen.objectives),
            "evaluations": result.evaluations,
        }
