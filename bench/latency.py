"""``python -m bench.latency``: does the cost pass predict what onnxruntime measures?

For each model (the embedded digits CNN, ``light_*`` architectures, real models from
``bench.models``) a set of configurations is lowered with mpqc — float, uniform w8a8 / w4a8 /
w8a16 / w2a8, w8adyn where layers have the dynamic form (DynamicQuantizeMatMul,
DynamicQuantizeLSTM), seeded random per-layer mixes, and what the ILP search picks under size and
latency budgets — and each one is

* *predicted*: the cost pass's total, ``mpqc.cost.total.fixed.latency_s`` plus the chosen entry's
  ``latency_s`` of every layer (exactly the sum the search minimizes), for the bundled spec of this
  CPU and for ``--hw auto``, the spec ``mpqc-hw profile`` fits on this machine (once, cached);
* *measured*: onnxruntime's CPU provider, one intra-op thread, full graph optimization, the median
  of interleaved repeats after warm-up (``mpqc.hwspecs.kernels.measure_models``): the configurations
  of one model take turns, so a burst of load from another process slows them alike.  Both the CPU
  time of the inference thread (with one intra-op thread the run executes there: what an inference
  costs on a core of its own) and the wall clock (that plus waiting for a core on a shared machine)
  are recorded; the first is the latency the cost model is scored against, the second is reported
  next to it.

Reported per model and pooled: Spearman's rank correlation of predicted against measured, and the
mean relative error ``|predicted - measured| / measured``.  The machine's load average before and
after is recorded next to the numbers.

``--haq`` instead reproduces HAQ's published latency reduction on its own hardware model
(``bench.haq_figure``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnx_ir as ir
from scipy.stats import spearmanr

from mpqc import hwspecs
from mpqc import ir as mir
from mpqc.core.bits import FLOAT_BITS, Bits
from mpqc.hwspecs.kernels import measure_models
from mpqc.ir import annotations
from mpqc.passes import CompileContext, load_calibration
from mpqc.passes.analysis.cost import predicted_total
from mpqc.pipeline import Pipeline
from mpqc.search import InfeasibleError

Inputs = dict[str, np.ndarray]
Pair = tuple[int, int]
FLOAT: Pair = (FLOAT_BITS, FLOAT_BITS)

#: Uniform configurations every model is measured in.
UNIFORM: dict[str, Pair] = {
    "float": FLOAT,
    "w8a8": (8, 8),
    "w4a8": (4, 8),
    "w8a16": (8, 16),
    "w2a8": (2, 8),
}
#: A dynamic range on the layers that have one (``w8adyn``).
DYNAMIC = Bits(8, 8, True)
#: What a random mix draws from, per layer.
MIX_CHOICES: tuple[Pair, ...] = (FLOAT, (8, 8), (4, 8), (8, 16))
#: Budgets the ILP search is run under (objective, budget): the configurations a user would get.
SEARCH_BUDGETS: tuple[tuple[str, str], ...] = (
    ("size", "0.2x"),
    ("size", "0.16x"),
    ("latency", "0.75x"),
)
DEFAULT_CASES = ("digits", "squeezenet", "shufflenet", "orientation", "minilm")


@dataclasses.dataclass(frozen=True)
class Case:
    """A float model, calibration samples, and the input latency is timed on (the cost pass sizes
    symbolic dims from the first calibration sample, so that is the one timed)."""

    name: str
    model: onnx.ModelProto
    calibration: list[Inputs]

    @property
    def feed(self) -> Inputs:
        return self.calibration[0]


def digits_case() -> Case:
    from mpqc import examples

    return Case(
        "digits", onnx.load(str(examples.digits_model_path())), examples.digits_calibration()[:32]
    )


def light_case(name: str) -> Case:
    from bench.uniform import light_case as uniform_light_case

    case = uniform_light_case(name, n_calib=8, n_eval=1)
    return Case(case.name, case.model, case.calibration)


def real_case(name: str) -> Case:
    from bench.models import get

    model = get(name)
    task = model.task(model.sizes.quick())
    return Case(name, onnx.load(str(model.float_path())), list(task.calibration_inputs)[:8])


def make_case(name: str) -> Case:
    from bench.light import LIGHT_MODELS
    from bench.models import MODELS

    if name == "digits":
        return digits_case()
    if name in LIGHT_MODELS:
        return light_case(name)
    if name in MODELS:
        return real_case(name)
    raise SystemExit(
        f"bench.latency: unknown model {name!r}; "
        f"choose digits, {', '.join(LIGHT_MODELS)}, {', '.join(MODELS)}"
    )


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    bits: dict[str, Pair]
    """Layer name -> (weight bits, activation bits); FLOAT_BITS for float."""


def _context(case: Case, spec: hwspecs.HardwareSpec) -> CompileContext:
    context = CompileContext(hw=spec, wbits=spec.weight_bits, abits=spec.act_bits)
    data = load_calibration(case.calibration)
    context.calibration, context.held_out = data, data
    return context


def analyse(case: Case, spec: hwspecs.HardwareSpec) -> ir.Model:
    """The canonicalized, calibrated model with the cost pass's annotations for ``spec``."""
    model = mir.load(case.model)
    Pipeline("canonicalize,calibrate,cost", _context(case, spec)).run_ir(model)
    return model


def layer_names(analysed: ir.Model) -> list[str]:
    return [
        layer.name
        for layer in mir.quantizable_layers(analysed.graph)
        if annotations.COST.has(layer.node)
    ]


def predict(costed: ir.Model, config: Config) -> float:
    """The cost pass's total latency of ``config``: fixed part plus each layer's chosen entry."""
    total = predicted_total(costed, config.bits)
    assert total is not None, config.name
    return total


def searched(case: Case, spec: hwspecs.HardwareSpec, objective: str, budget: str) -> Config:
    """The configuration the ILP search picks (data-free weight-error damage) under one budget."""
    context = _context(case, spec)
    context.wbits, context.abits = (8, 4, 2), (8,)
    context.constraints = {objective: budget}
    model = mir.load(case.model)
    Pipeline(
        "canonicalize,calibrate,sensitivity-weight-error,cost,"
        "search{strategy=ilp,metric=weight-error,latency_cap=false}",
        context,
    ).run_ir(model)
    bits = {}
    for layer in mir.quantizable_layers(model.graph):
        chosen = annotations.BITS.get(layer.node)
        if chosen is not None:
            bits[layer.name] = annotations.chosen_bits(chosen)
    return Config(f"ilp {objective}<={budget}", bits)


def configurations(
    case: Case,
    analysed: ir.Model,
    spec: hwspecs.HardwareSpec,
    mixes: int,
    seed: int,
    log: Callable[[str], None] = lambda line: None,
) -> list[Config]:
    """The uniform configurations, ``mixes`` seeded random mixes, and what the search picks per
    budget (a budget no configuration meets is logged and skipped)."""
    names = layer_names(analysed)
    configs = [Config(name, {layer: pair for layer in names}) for name, pair in UNIFORM.items()]
    tables = {
        layer.name: annotations.COST.get(layer.node)
        for layer in mir.quantizable_layers(analysed.graph)
        if layer.name in names
    }
    if any(str(DYNAMIC) in table for table in tables.values()):
        # what --uniform w8adyn lowers: the dynamic form (DynamicQuantizeMatMul/-LSTM) where a
        # layer has one, w8a8 elsewhere
        configs.append(
            Config(
                str(DYNAMIC),
                {name: DYNAMIC if str(DYNAMIC) in tables[name] else (8, 8) for name in names},
            )
        )
    rng = np.random.default_rng([seed, sum(map(ord, case.name))])
    for index in range(mixes):
        draws = rng.integers(0, len(MIX_CHOICES), len(names))
        configs.append(
            Config(
                f"mix{index}",
                {layer: MIX_CHOICES[d] for layer, d in zip(names, draws, strict=True)},
            )
        )
    for objective, budget in SEARCH_BUDGETS:
        try:
            configs.append(searched(case, spec, objective, budget))
        except InfeasibleError as exc:
            # An infeasible budget is a finding, not a crash: note it and go on.
            reason = str(exc).splitlines()[0]
            log(f"  {case.name}: search under {objective} {budget} failed: {reason}")
    return configs


def lower(analysed: ir.Model, case: Case, spec: hwspecs.HardwareSpec, config: Config) -> bytes:
    """``config`` lowered by ``lower-qdq`` from the analysed model, serialized; ``analysed`` is
    untouched."""
    # A serialized copy, not ``clone()``: onnx_ir's clone shares value types with the original, so
    # lowering one clone retyped the original's embedding rows (MiniLM's int8 Gather output).
    model = ir.serde.deserialize_model(ir.serde.serialize_model(analysed))
    for layer in mir.quantizable_layers(model.graph):
        pair = config.bits.get(layer.name, FLOAT)
        annotations.BITS.set(layer.node, annotations.layer_bits(pair))
    Pipeline("lower-qdq", _context(case, spec)).run_ir(model)
    return ir.to_proto(model).SerializeToString()


@dataclasses.dataclass(frozen=True)
class Row:
    model: str
    config: str
    measured_s: float
    """Median CPU seconds of the inference thread."""
    wall_s: float
    predicted_s: dict[str, float]


def run_case(
    case: Case,
    specs: dict[str, hwspecs.HardwareSpec],
    lowering_spec: str,
    mixes: int,
    seed: int,
    min_seconds: float,
    log: Callable[[str], None],
) -> list[Row]:
    """Every configuration of ``case``, lowered for ``lowering_spec``, measured once (interleaved)
    and predicted by each spec's cost pass."""
    analysed = {label: analyse(case, spec) for label, spec in specs.items()}
    base = analysed[lowering_spec]
    configs = configurations(case, base, specs[lowering_spec], mixes, seed, log)
    models = [lower(base, case, specs[lowering_spec], config) for config in configs]
    measured = measure_models(models, threads=1, min_seconds=min_seconds, feeds=case.feed)
    rows = []
    for config, timing in zip(configs, measured, strict=True):
        row = Row(
            case.name,
            config.name,
            timing.cpu_s,
            timing.wall_s,
            {label: predict(costed, config) for label, costed in analysed.items()},
        )
        log(
            f"  {case.name:12s} {config.name:18s} measured {timing.cpu_s * 1e3:9.3f} ms "
            f"(wall {timing.wall_s * 1e3:9.3f})  "
            + "  ".join(f"{label} {p * 1e3:9.3f} ms" for label, p in row.predicted_s.items())
        )
        rows.append(row)
    return rows


def score(rows: Sequence[Row], label: str, wall: bool = False) -> dict[str, float]:
    """Spearman rho and mean relative error of ``label``'s predictions over ``rows`` (against the
    thread's CPU time, or the wall clock)."""
    measured = np.array([r.wall_s if wall else r.measured_s for r in rows])
    predicted = np.array([r.predicted_s[label] for r in rows])
    rho = float(spearmanr(predicted, measured).statistic) if len(rows) > 2 else float("nan")
    return {
        "n": len(rows),
        "spearman": rho,
        "mean_rel_error": float(np.mean(np.abs(predicted - measured) / measured)),
    }


def summary(
    rows: Sequence[Row], labels: Sequence[str], wall: bool = False
) -> dict[str, dict[str, dict[str, float]]]:
    models = list(dict.fromkeys(r.model for r in rows))
    table = {
        m: {label: score([r for r in rows if r.model == m], label, wall) for label in labels}
        for m in models
    }
    table["pooled"] = {label: score(rows, label, wall) for label in labels}
    return table


def print_table(
    table: dict[str, dict[str, dict[str, float]]], labels: Sequence[str], title: str
) -> None:
    print(f"\n{title}\n")
    print(
        "| model | n | "
        + " | ".join(f"{label} ρ | {label} mean rel. err." for label in labels)
        + " |"
    )
    print("|---|---|" + "---|---|" * len(labels))
    for model, scores in table.items():
        n = next(iter(scores.values()))["n"]
        cells = " | ".join(
            f"{s['spearman']:.2f} | {s['mean_rel_error'] * 100:.0f}%" for s in scores.values()
        )
        print(f"| {model} | {n} | {cells} |")


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.latency", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_CASES),
        help="comma-separated: digits, light_* names, bench.models names",
    )
    parser.add_argument(
        "--spec",
        default=None,
        help="bundled spec to compare (default: this machine's, as mpqc-hw profile picks)",
    )
    parser.add_argument("--mixes", type=int, default=4, help="random per-layer mixes per model")
    parser.add_argument(
        "--seconds", type=float, default=0.5, help="measuring time per configuration"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=pathlib.Path, help="write every row and the summary here")
    parser.add_argument(
        "--haq", action="store_true", help="reproduce HAQ's BISMO speedup over 8-bit instead"
    )
    args = parser.parse_args(argv)
    if args.haq:
        from bench import haq_figure  # it builds on this module's predict()

        haq_figure.print_table()
        return 0
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    from mpqc.hwspecs.machine import base_for_machine

    bundled = args.spec or base_for_machine()
    specs = {bundled: hwspecs.load(bundled), "auto": hwspecs.load("auto")}
    load_before = load_average()
    rows: list[Row] = []
    for name in args.models.split(","):
        rows += run_case(
            make_case(name.strip()), specs, bundled, args.mixes, args.seed, args.seconds, log
        )
    load_after = load_average()
    labels = list(specs)
    table, wall_table = summary(rows, labels), summary(rows, labels, wall=True)
    print(
        f"load average (1, 5, 15 min) before {tuple(round(x, 2) for x in load_before)}, "
        f"after {tuple(round(x, 2) for x in load_after)}"
    )
    print_table(table, labels, "against the inference thread's CPU time")
    print_table(wall_table, labels, "against the wall clock")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "load_before": load_before,
                    "load_after": load_after,
                    "summary": table,
                    "summary_wall": wall_table,
                    "rows": [dataclasses.asdict(r) for r in rows],
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
