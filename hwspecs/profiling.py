"""``mpqc-hw profile``: measure onnxruntime here, fit a spec, check it ranks configurations right.

What is measured (micro-kernels from ``kernels``), at 1 thread and at the requested thread count:
* the session call itself (a one-element Identity): the spec's ``session_overhead``;
* standalone QuantizeLinear / DequantizeLinear, and the float elementwise ops the cost model charges
  (Clip, HardSwish, Sigmoid, Mul, Add), at several sizes -> fixed + per-element overheads;
* compute-bound Conv and MatMul layers at a few sizes, depthwise convs, and tiny layers that expose
  the per-op cost, in float, u8 x s8 and s8 x s8 (the native pairs), and int4-weight and
  16-bit-activation versions (the pairs onnxruntime emulates in float);
* one float and one u8 x s8 matrix-vector product per memory level of the base spec, sized to land
  in it.
A shape's precisions are timed round-robin; shapes one after another, so a 64 MiB product does not
evict a tiny kernel's cache.  At one thread the time is the inference thread's CPU time, which other
processes' load does not inflate by waiting (``kernels.time_models``).
``fitting.fit_roofline`` turns these into the spec's numbers.  Energy, capacities, bit-widths and
the op table cannot be measured from timings; they come from the base spec (``base:`` inheritance).

The fitted spec is then checked the way it will be used: mixed-precision configurations of a
held-out network are ranked by the cost model and by onnxruntime, and Spearman's rank correlation of
the two goes into the spec's provenance (also for the base spec, for comparison).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import yaml
from scipy.stats import spearmanr

from mpqc.hwspecs import load
from mpqc.hwspecs.cost import CostModel
from mpqc.hwspecs.fitting import Fit, Sample, fit_line, fit_roofline
from mpqc.hwspecs.kernels import (
    ELEMENTWISE,
    KERNEL_PAIR,
    Kernel,
    KernelPrecision,
    build_chain,
    build_convert_model,
    build_elementwise_model,
    build_identity_model,
    build_model,
    layer_desc,
    time_model,
    time_models,
)
from mpqc.hwspecs.loader import build_spec, deep_merge, locate, resolve, validate_document
from mpqc.hwspecs.machine import cpu_name
from mpqc.hwspecs.spec import HardwareSpec, Overhead, precision_key
from mpqc.hwspecs.units import format_quantity

MEASURED: tuple[KernelPrecision, ...] = ("float", "u8s8", "s8s8", "u8s4", "u16s8")

RANKING_CHAIN = [
    Kernel("Conv", 16, 32, 40),
    Kernel("Conv", 32, 32, 40, kernel=1),
    Kernel("Conv", 32, 64, 40),
    Kernel("Conv", 64, 32, 40, kernel=1),
]
"""A held-out network (shapes the fit never sees) whose mixed-precision configurations are
ranked."""


def compute_kernels(quick: bool) -> list[Kernel]:
    """Compute-bound shapes (millions of MACs, small working sets) plus tiny ones that expose the
    per-op cost."""
    kernels = [
        Kernel("Conv", 64, 64, 28),
        Kernel("MatMul", 512, 512, 64),
        Kernel("Conv", 4, 4, 4),
        Kernel("MatMul", 16, 16, 1),
        Kernel("Conv", 64, 64, 56, groups=64),
    ]
    if not quick:
        kernels += [
            Kernel("Conv", 128, 128, 14),
            Kernel("Conv", 32, 32, 56),
            Kernel("Conv", 128, 128, 28, kernel=1),
            Kernel("MatMul", 768, 768, 128),
            Kernel("MatMul", 64, 64, 16),
            Kernel("Conv", 128, 128, 28, groups=128),
            Kernel("Conv", 256, 256, 14, groups=256),
        ]
    return kernels


def memory_kernels(capacities: list[float]) -> list[Kernel]:
    """One matrix-vector product per memory level, its float weights sized to land in that level.

    With one row a product does one MAC per weight loaded, so it is memory-bound on every CPU; the
    working set sits between the previous level's capacity and this one's (4x the largest bounded
    level for the unbounded one)."""
    kernels, previous = [], 0.0
    for capacity in capacities:
        target = (
            4 * previous
            if capacity == float("inf")
            else (capacity / 2 if previous == 0 else (previous * capacity) ** 0.5)
        )
        side = max(16, int((target / 4) ** 0.5) // 16 * 16)
        kernels.append(Kernel("MatMul", side, side, 1))
        previous = capacity
    return kernels


@dataclass(frozen=True)
class Measurement:
    kernel: Kernel
    precision: KernelPrecision
    threads: int
    seconds: float


@dataclass(frozen=True)
class RankingCheck:
    spearman: float
    configs: list[tuple[str, ...]]
    measured_s: list[float]
    predicted_s: list[float]


def predicted_latency(spec: HardwareSpec, layers: list[tuple[Kernel, KernelPrecision]]) -> float:
    """The cost model's latency of a chain built by ``build_chain``: one call, layer after layer."""
    model = CostModel(spec)
    total = spec.session_overhead
    for index, (kernel, precision) in enumerate(layers):
        wbits, abits, signed = KERNEL_PAIR[precision]
        desc = dataclasses.replace(
            layer_desc(kernel, f"l{index}"),
            input_from_layer=index > 0,
            output_to_layers=index < len(layers) - 1,
        )
        total += model.layer_cost(desc, wbits, abits, act_signed=signed).latency_s
    return total


def ranking_check(
    spec: HardwareSpec,
    threads: int,
    min_seconds: float,
    samples: int = 12,
    seed: int = 0,
    chain: list[Kernel] = RANKING_CHAIN,
) -> RankingCheck:
    """Measure mixed-precision configurations of ``chain`` and rank them against the cost model.

    Configurations: the four uniform ones (float, w8a8, w4a8, w8a16) plus ``samples`` random mixes
    of them; the score is Spearman's rank correlation of predicted and measured latency (1 = same
    order)."""
    choices: list[KernelPrecision] = ["float", "u8s8", "u8s4", "u16s8"]
    rng = np.random.default_rng(seed)
    configs = [tuple([c] * len(chain)) for c in choices]
    while len(configs) < len(choices) + samples:
        config = tuple(choices[i] for i in rng.integers(0, len(choices), len(chain)))
        if config not in configs:
            configs.append(config)
    layers = [list(zip(chain, config, strict=True)) for config in configs]
    predicted = [predicted_latency(spec, config_layers) for config_layers in layers]
    measured = time_models(
        [build_chain(config_layers) for config_layers in layers], threads, min_seconds
    )
    return RankingCheck(
        float(spearmanr(predicted, measured).statistic), configs, measured, predicted
    )


def profile(
    base: str, threads: int, quick: bool, log: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Measure this machine and return a spec document extending ``base`` (see module docstring)."""
    base_spec = load(base)
    min_seconds = 0.05 if quick else 0.3
    run_s = time_model(build_identity_model(), 1, min_seconds)
    log(f"session call: {run_s * 1e6:.1f} us")

    conversions: dict[str, Overhead] = {}
    sizes = [1_000, 300_000] if quick else [1_000, 10_000, 100_000, 1_000_000]
    for op in ("QuantizeLinear", "DequantizeLinear"):
        fixed, per_element = fit_line(
            sizes, [time_model(build_convert_model(n, op), 1, min_seconds) for n in sizes]
        )
        conversions[op] = Overhead(max(fixed - run_s, 0.0), per_element)
        log(f"{op}: {conversions[op].fixed * 1e6:.2f} us + {per_element * 1e9:.3f} ns/element")
    elementwise: dict[str, Overhead] = {}
    for op in ELEMENTWISE:
        fixed, per_element = fit_line(
            sizes, [time_model(build_elementwise_model(n, op), 1, min_seconds) for n in sizes]
        )
        elementwise[op] = Overhead(max(fixed - run_s, 0.0), per_element)
        log(f"{op}: {elementwise[op].fixed * 1e6:.2f} us + {per_element * 1e9:.3f} ns/element")

    precisions = [p for p in MEASURED if _role(base_spec, p) is not None]
    capacities = [level.capacity for level in base_spec.memory]
    if quick:  # the unbounded level needs a working set several times the last cache: slow to build
        capacities = [c for c in capacities if c != float("inf")]
    shapes = [(k, precisions) for k in compute_kernels(quick)]
    shapes += [(k, ("float", "u8s8")) for k in memory_kernels(capacities)]
    measurements = []
    for count in sorted({1, threads}):
        # One shape's precisions take turns (load hits them alike); shapes are timed one after
        # another, so a 64 MiB matrix-vector product does not evict a tiny kernel's cache between
        # its runs.
        for kernel, kinds in shapes:
            times = time_models(
                [build_model(kernel, precision) for precision in kinds], count, min_seconds
            )
            for precision, seconds in zip(kinds, times, strict=True):
                measurements.append(Measurement(kernel, precision, count, seconds))
                log(
                    f"{count} thread(s) {kernel.label():32s} {precision:5s} "
                    f"{seconds * 1e6:10.1f} us"
                )

    fits = {
        count: _fit(base_spec, conversions, run_s, [m for m in measurements if m.threads == count])
        for count in sorted({1, threads})
    }
    document = _document(base, threads, quick, fits[threads], run_s, {**conversions, **elementwise})
    fitted = spec_from_document(deep_merge(resolve(locate(base)), document))
    checks = {
        name: ranking_check(spec, threads, min_seconds)
        for name, spec in (("fitted", fitted), (base, base_spec))
    }
    for name, check in checks.items():
        log(
            f"ranking of {len(check.configs)} held-out configurations, {name} spec: "
            f"Spearman {check.spearman:.3f}"
        )
    document["provenance"] = {
        "tool": "mpqc-hw profile" + (" --quick" if quick else ""),
        "onnxruntime": ort.__version__,
        "machine": f"{platform.machine()}, {cpu_name()}",
        "seconds_per_kernel": min_seconds,
        "session_call_us": round(run_s * 1e6, 3),
        "elementwise_ns_per_element": {
            op: round(o.per_element * 1e9, 4) for op, o in elementwise.items()
        },
        "fits": {f"threads_{count}": _fit_record(fit) for count, fit in fits.items()},
        "ranking_spearman": {name: round(check.spearman, 4) for name, check in checks.items()},
        "measurements_us": [
            f"{m.threads}t {m.kernel.label()} {m.precision}: {m.seconds * 1e6:.1f}"
            for m in measurements
        ],
    }
    return document


def _role(spec: HardwareSpec, precision: KernelPrecision) -> tuple[str, str | None] | None:
    """How the base spec runs a kernel precision: (pair whose throughput it runs at, pair whose
    weight unpack it pays), or None when the fit cannot use it (unsupported, or emulated in
    something other than float).  An emulated pair gets its own throughput: onnxruntime runs its
    unfused float Conv in plain NCHW, without the NCHWc layout (and its speed) the float graph
    gets."""
    wbits, abits, signed = KERNEL_PAIR[precision]
    if not _supports(spec, wbits, abits, signed):
        return None
    key = (
        precision_key(wbits, abits, signed)
        if signed and precision_key(wbits, abits, True) in spec.precisions
        else precision_key(wbits, abits)
    )
    entry = spec.precision(wbits, abits, signed)
    if entry.native:
        return key, None
    return (key, key) if entry.emulated_as == "float" else None


def _supports(spec: HardwareSpec, wbits: int | None, abits: int | None, signed: bool) -> bool:
    return spec.supports(wbits, abits) and (
        not signed or precision_key(wbits, abits, True) in spec.precisions
    )


def _fit(
    base_spec: HardwareSpec,
    conversions: dict[str, Overhead],
    run_s: float,
    measurements: list[Measurement],
) -> Fit:
    model = CostModel(base_spec)
    samples = []
    for m in measurements:
        wbits, abits, _ = KERNEL_PAIR[m.precision]
        kernel_key, unpack = _role(base_spec, m.precision)  # type: ignore[misc]
        emulated = unpack is not None
        if emulated and m.kernel.op_type in base_spec.precisions[unpack].weight_unpack_ops:
            # The base spec fixes this op's unpack (MatMulNBits: none); the rate is still fitted.
            unpack = None
        desc = layer_desc(m.kernel, "k")
        if desc.depthwise:
            kernel_key += DEPTHWISE
        moved = model.weight_bytes(desc, wbits) + model.act_bytes(desc, abits)
        samples.append(
            Sample(
                seconds=m.seconds,
                macs=desc.macs,
                moved_bytes=moved,
                weight_params=desc.weight_params,
                kernel=kernel_key,
                unpack=unpack,
                level=base_spec.memory_level_for(moved).name,
                fixed_seconds=run_s
                + _conversion_s(conversions, m.kernel, m.precision, emulated=emulated),
            )
        )
    prior_unpack = {}
    for key in {s.unpack for s in samples if s.unpack is not None}:
        entry = base_spec.precisions[key]
        prior_unpack[key] = (
            entry.weight_unpack
            if entry.weight_unpack is not None
            else conversions["DequantizeLinear"].per_element
        )
    return fit_roofline(
        samples,
        prior_overhead=base_spec.overhead("Conv").fixed,
        prior_throughput={s.kernel: _prior_rate(base_spec, s.kernel) for s in samples},
        prior_unpack=prior_unpack,
        prior_bandwidth={level.name: level.bandwidth for level in base_spec.memory},
    )


DEPTHWISE = "/depthwise"
"""Suffix of the fit's throughput key for a pair's depthwise convolutions."""


def _prior_rate(spec: HardwareSpec, key: str) -> float:
    precision = spec.precisions[key.removesuffix(DEPTHWISE)]
    return precision.rate(depthwise=key.endswith(DEPTHWISE))


def _conversion_s(
    conversions: dict[str, Overhead], kernel: Kernel, precision: KernelPrecision, emulated: bool
) -> float:
    """The Q/DQ time ``CostModel`` charges a one-layer island: Q on its input, then DQ on its output
    for an integer kernel, or DQ of its input and the weight's DQ node for a pair emulated in
    float."""
    if precision == "float":
        return 0.0
    quantize, dequantize = conversions["QuantizeLinear"], conversions["DequantizeLinear"]
    if emulated:
        return (
            quantize.time(kernel.input_elems)
            + dequantize.time(kernel.input_elems)
            + dequantize.fixed
        )
    return quantize.time(kernel.input_elems) + dequantize.time(kernel.output_elems)


def _document(
    base: str, threads: int, quick: bool, fit: Fit, run_s: float, overheads: dict[str, Overhead]
) -> dict[str, Any]:
    precisions: dict[str, dict[str, str]] = {}
    for key, rate in sorted(fit.throughput.items()):
        field = "depthwise_throughput" if key.endswith(DEPTHWISE) else "throughput"
        precisions.setdefault(key.removesuffix(DEPTHWISE), {})[field] = format_quantity(
            rate, "throughput"
        )
    for key, unpack in fit.unpack.items():
        precisions.setdefault(key, {})["weight_unpack"] = format_quantity(unpack, "time")
    return {
        "base": base,
        "description": (
            f"Fitted by mpqc-hw profile{' --quick' if quick else ''} on {platform.machine()} "
            f"({cpu_name()}), onnxruntime {ort.__version__}, {threads} thread(s): throughput, "
            "unpack times, bandwidth and overheads measured; energy, capacities, bit-widths and "
            f"the op table inherited from {base}."
        ),
        "threads": threads,
        "session_overhead": format_quantity(run_s, "time"),
        "precisions": precisions,
        "memory": {
            level: {"bandwidth": format_quantity(b, "bandwidth")}
            for level, b in fit.bandwidth.items()
        },
        "overheads": {
            "default": {"fixed": format_quantity(fit.overhead, "time")},
            **{
                op: {
                    "fixed": format_quantity(o.fixed, "time"),
                    "per_element": format_quantity(o.per_element, "time"),
                }
                for op, o in overheads.items()
            },
        },
    }


def _fit_record(fit: Fit) -> dict[str, Any]:
    return {
        "overhead_us": round(fit.overhead * 1e6, 3),
        "throughput_GMAC_s": {key: round(t / 1e9, 3) for key, t in fit.throughput.items()},
        "weight_unpack_ns": {key: round(u * 1e9, 4) for key, u in fit.unpack.items()},
        "bandwidth_GB_s": {level: round(b / 1e9, 3) for level, b in fit.bandwidth.items()},
        "rms_log_error": round(fit.rms_log_error, 4),
    }


def spec_from_document(document: dict[str, Any]) -> HardwareSpec:
    """A spec from an in-memory, already merged document."""
    path = Path("<profile>")
    validate_document(path, document)
    return build_spec(path, document)


def write_spec(document: dict[str, Any], path: Path, header: str) -> None:
    """Write ``document`` as spec YAML, atomically: a temp file in the same directory is written,
    validated by loading it back, then moved over ``path`` (an existing file is only ever replaced
    whole)."""
    path = Path(path)
    document = {"name": _name_for(path), **document}
    text = "".join(f"# {line}\n" for line in header.splitlines())
    text += yaml.safe_dump(document, sort_keys=False, width=100, allow_unicode=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".yaml", dir=path.parent)
    temp = Path(temp_name)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        merged = resolve(temp)
        validate_document(path, merged)
        build_spec(path, merged)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _name_for(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem).lstrip("_.-")
    return name or "profiled"
