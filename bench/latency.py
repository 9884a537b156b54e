"""``python -m bench.latency``: does the cost pass predict what onnxruntime measures?

For each model (the embedded digits CNN, ``light_*`` architectures, real models from
``bench.models``) a set of configurations is lowered with mpqc — float, uniform w8a8 / w4a8 /
w8a16 / w2a8, seeded random per-layer mixes, and what the ILP search picks under size and latency
budgets — and each one is

* *predicted*: the cost pass's total, ``mpqc.cost.total.fixed.latency_s`` plus the chosen entry's
  ``latency_s`` of every layer (exactly the sum the search minimizes), for the bundled spec of this
  CPU and for a spec ``mpqc-hw profile`` fitted here;
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

``--haq`` instead reproduces HAQ's published latency reduction on its own hardware model (see
``haq_speedups``): MobileNet-V1/V2 for ImageNet built here, priced by the cost pass on the bundled
``bismo_edge`` and ``bismo_cloud`` specs.
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
from mpqc.core.bits import FLOAT_BITS
from mpqc.hwspecs.kernels import measure_models
from mpqc.ir import annotations
from mpqc.passes import CompileContext, load_calibration
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


def _key(pair: Pair) -> str:
    return "float" if pair == FLOAT else f"w{pair[0]}a{pair[1]}"


def predict(costed: ir.Model, config: Config) -> float:
    """The cost pass's total latency of ``config``: fixed part plus each layer's chosen entry."""
    total = float(annotations.MODEL_COST.get(costed)["fixed"]["latency_s"])
    for layer in mir.quantizable_layers(costed.graph):
        table = annotations.COST.get(layer.node)
        if table is not None:
            total += float(table[_key(config.bits.get(layer.name, FLOAT))]["latency_s"])
    return total


def searched(case: Case, spec: hwspecs.HardwareSpec, objective: str, budget: str) -> Config:
    """The configuration the ILP search picks (data-free weight-error damage) under one budget."""
    context = _context(case, spec)
    context.wbits, context.abits = (8, 4, 2), (8,)
    context.constraints = {objective: budget}
    model = mir.load(case.model)
    Pipeline(
        "canonicalize,calibrate,sensitivity-weight-error,cost,search{strategy=ilp,metric=weight-error}",
        context,
    ).run_ir(model)
    bits = {}
    for layer in mir.quantizable_layers(model.graph):
        chosen = annotations.BITS.get(layer.node)
        if chosen is not None:
            bits[layer.name] = (int(chosen["w"]), int(chosen["a"]))
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
        annotations.BITS.set(layer.node, {"w": pair[0], "a": pair[1]})
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


def profiled_spec(path: pathlib.Path, log: Callable[[str], None]) -> hwspecs.HardwareSpec:
    """The spec ``mpqc-hw profile`` fits on this machine, profiled once into ``path``."""
    if not path.exists():
        from mpqc.hwspecs import profiling

        log(f"profiling this machine into {path} ...")
        base = profiling.base_for_machine()
        document = profiling.profile(base, threads=1, quick=False, log=log)
        path.parent.mkdir(parents=True, exist_ok=True)
        profiling.write_spec(
            document, path, "Written by bench.latency (mpqc-hw profile, 1 thread); see provenance."
        )
    return hwspecs.load(path)


# -- HAQ's published figure ------------------------------------------------------------------------

#: HAQ (arXiv 1811.08886), abstract: "reduced the latency by 1.4-1.95x ... with negligible loss
#: of accuracy compared with the fixed bitwidth (8 bits) quantization", on BISMO edge (Zynq-7020)
#: and cloud (VU9P).
HAQ_SPEEDUP_RANGE = (1.4, 1.95)

#: MobileNet-V1 (Howard et al. 2017, Table 1): after a 3x3 stride-2 stem of 32 channels,
#: depthwise 3x3 + pointwise 1x1 pairs as (stride, output channels).
MOBILENET_V1 = (
    (1, 64),
    (2, 128),
    (1, 128),
    (2, 256),
    (1, 256),
    (2, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (2, 1024),
    (1, 1024),
)
#: MobileNet-V2 (Sandler et al. 2018, Table 2): inverted residual stages (expansion t, channels
#: c, repeats n, stride s).
MOBILENET_V2 = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class _Builder:
    """A float ONNX network built layer by layer, He-normal weights from a fixed seed (BN folded
    away)."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def conv(
        self,
        x: str,
        c_in: int,
        c_out: int,
        k: int,
        stride: int,
        groups: int = 1,
        act: str | None = "Relu",
    ) -> str:
        name = f"conv{len(self.nodes)}"
        weight = self.rng.normal(
            0, np.sqrt(2 / (c_in // groups * k * k)), (c_out, c_in // groups, k, k)
        ).astype(np.float32)
        self.inits += [
            onnx.numpy_helper.from_array(weight, f"{name}.w"),
            onnx.numpy_helper.from_array(np.zeros(c_out, np.float32), f"{name}.b"),
        ]
        self.nodes.append(
            onnx.helper.make_node(
                "Conv",
                [x, f"{name}.w", f"{name}.b"],
                [name],
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[k // 2] * 4,
                group=groups,
            )
        )
        if act is None:
            return name
        self.nodes.append(onnx.helper.make_node(act, [name], [f"{name}.act"]))
        return f"{name}.act"

    def node(self, op: str, inputs: list[str], **attrs: object) -> str:
        out = f"{op.lower()}{len(self.nodes)}"
        self.nodes.append(onnx.helper.make_node(op, inputs, [out], **attrs))
        return out

    def classifier(self, x: str, channels: int, classes: int = 1000) -> onnx.ModelProto:
        pooled = self.node("Flatten", [self.node("GlobalAveragePool", [x])])
        weight = self.rng.normal(0, np.sqrt(1 / channels), (classes, channels)).astype(np.float32)
        self.inits.append(onnx.numpy_helper.from_array(weight, "fc.w"))
        logits = self.node("Gemm", [pooled, "fc.w"], transB=1)
        graph = onnx.helper.make_graph(
            self.nodes,
            "mobilenet",
            [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, 224, 224])],
            [onnx.helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT, None)],
            self.inits,
        )
        return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])


def mobilenet_v1() -> onnx.ModelProto:
    """MobileNet-V1 1.0 for 224x224 ImageNet: 28 Conv/Gemm layers, 569 M MACs."""
    net = _Builder()
    x, channels = net.conv("image", 3, 32, 3, 2), 32
    for stride, out in MOBILENET_V1:
        x = net.conv(
            net.conv(x, channels, channels, 3, stride, groups=channels), channels, out, 1, 1
        )
        channels = out
    return net.classifier(x, channels)


def mobilenet_v2() -> onnx.ModelProto:
    """MobileNet-V2 1.0 for 224x224 ImageNet (ReLU6 as Clip): 53 Conv/Gemm layers, about 300 M
    MACs."""
    net = _Builder()
    relu6 = "Relu"  # ReLU6's upper clip does not change any MAC count or byte the cost model sees
    x, channels = net.conv("image", 3, 32, 3, 2, act=relu6), 32
    for t, c, n, s in MOBILENET_V2:
        for index in range(n):
            stride = s if index == 0 else 1
            hidden = channels * t
            y = net.conv(x, channels, hidden, 1, 1, act=relu6) if t != 1 else x
            y = net.conv(y, hidden, hidden, 3, stride, groups=hidden, act=relu6)
            y = net.conv(y, hidden, c, 1, 1, act=None)
            x = net.node("Add", [x, y]) if stride == 1 and channels == c else y
            channels = c
    return net.classifier(net.conv(x, channels, 1280, 1, 1, act=relu6), 1280)


def uniform_latency(costed: ir.Model, bits: int) -> float:
    """The cost pass's total latency of uniform ``bits``-bit weights and activations."""
    names = layer_names(costed)
    return predict(costed, Config(f"w{bits}a{bits}", {name: (bits, bits) for name in names}))


def haq_speedups(bits: int = 6) -> dict[tuple[str, str], float]:
    """Latency of fixed 8-bit over ``bits``-bit, per (network, BISMO spec), from the cost pass.

    HAQ's latency-constrained policies (its Table of BISMO edge/cloud results) are held to the
    latency of uniform 4-, 5- and 6-bit quantization; at the 6-bit budget their accuracy matches
    8-bit's, which is the "negligible loss" the abstract's 1.4-1.95x speedup over fixed 8-bit is
    quoted at.  So the speedup a 6-bit-budget policy reaches over 8-bit is 8-bit latency / 6-bit
    latency on the same model.
    """
    speedups = {}
    for net_name, build in (("MobileNet-V1", mobilenet_v1), ("MobileNet-V2", mobilenet_v2)):
        for spec_name in ("bismo_edge", "bismo_cloud"):
            spec = hwspecs.load(spec_name)
            model = mir.load(build())
            Pipeline(
                "canonicalize,cost", CompileContext(hw=spec, wbits=(bits, 8), abits=(bits, 8))
            ).run_ir(model)
            speedups[(net_name, spec_name)] = uniform_latency(model, 8) / uniform_latency(
                model, bits
            )
    return speedups


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
    parser.add_argument(
        "--profiled",
        type=pathlib.Path,
        default=pathlib.Path.home() / ".cache" / "mpqc-bench" / "latency" / "profiled.yaml",
        help="fitted spec (profiled here first if missing)",
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
        low, high = HAQ_SPEEDUP_RANGE
        print(f"| network | spec | 8-bit / 6-bit latency | HAQ: {low}-{high}x |")
        print("|---|---|---|---|")
        for (net_name, spec_name), speedup in haq_speedups().items():
            verdict = "within" if low <= speedup <= high else "outside"
            print(f"| {net_name} | {spec_name} | {speedup:.2f}x | {verdict} |")
        return 0
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    from mpqc.hwspecs.profiling import base_for_machine

    bundled = args.spec or base_for_machine()
    specs = {bundled: hwspecs.load(bundled), "profiled": profiled_spec(args.profiled, log)}
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
