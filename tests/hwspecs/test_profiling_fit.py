"""The pieces behind ``mpqc-hw profile``: kernels, the least-squares fit, atomic writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

from mpqc import hwspecs
from mpqc.hwspecs import SpecError
from mpqc.hwspecs.fitting import Sample, fit_line, fit_roofline
from mpqc.hwspecs.kernels import Kernel, build_chain, build_convert_model, layer_desc
from mpqc.hwspecs.machine import base_for_machine
from mpqc.hwspecs.profiling import memory_kernels, write_spec


def test_fit_line_recovers_a_line() -> None:
    sizes = [1_000, 10_000, 100_000, 1_000_000]
    fixed, per_element = fit_line(sizes, [2e-6 + 3e-10 * n for n in sizes])
    assert fixed == pytest.approx(2e-6, rel=1e-6) and per_element == pytest.approx(3e-10, rel=1e-6)


def test_fit_roofline_recovers_known_parameters_from_exact_timings() -> None:
    truth = {
        "overhead": 3e-6,
        "float": 40e9,
        "w8a8": 80e9,
        "w4a8": 30e9,
        "unpack": 4e-9,
        "l2": 100e9,
        "dram": 8e9,
    }
    samples = []
    shapes = [
        (10**7, 10**4, "l2"),
        (3 * 10**7, 5 * 10**4, "l2"),
        (10**3, 10**4, "l2"),
        (10**6, 6 * 10**7, "dram"),
        (2 * 10**6, 3 * 10**7, "dram"),
        (10**8, 10**5, "l2"),
    ]
    for macs, moved, level in shapes:
        for kernel, unpack in (("float", None), ("w8a8", None), ("w4a8", "w4a8")):
            weights = moved // 4
            seconds = 1e-5 + truth["overhead"] + max(macs / truth[kernel], moved / truth[level])
            seconds += truth["unpack"] * weights if unpack else 0.0
            samples.append(
                Sample(seconds, macs, moved, weights, kernel, unpack, level, fixed_seconds=1e-5)
            )
    fit = fit_roofline(
        samples,
        prior_overhead=1e-6,
        prior_throughput={"float": 30e9, "w8a8": 50e9, "w4a8": 50e9},
        prior_unpack={"w4a8": 1e-9},
        prior_bandwidth={"l2": 50e9, "dram": 10e9},
    )
    assert fit.rms_log_error < 0.01
    assert fit.throughput["float"] == pytest.approx(40e9, rel=0.05)
    assert fit.throughput["w8a8"] == pytest.approx(80e9, rel=0.05)
    assert fit.bandwidth["dram"] == pytest.approx(8e9, rel=0.05)
    assert fit.unpack["w4a8"] == pytest.approx(4e-9, rel=0.1)


def test_chain_models_are_valid_and_run() -> None:
    kernel = Kernel("Conv", 8, 8, 6)
    for precision in ("float", "u8s8", "s8s8", "u8s4", "u16s8"):
        model = build_chain([(kernel, precision), (kernel, "float")])
        onnx.checker.check_model(model, full_check=True)
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        (out,) = session.run(None, {"x": np.ones(kernel.input_shape, np.float32)})
        assert list(out.shape) == kernel.output_shape
    matmul = Kernel("MatMul", 32, 16, 4)
    onnx.checker.check_model(build_chain([(matmul, "u8s4")]), full_check=True)
    onnx.checker.check_model(build_convert_model(100, "QuantizeLinear"), full_check=True)


def test_layer_desc_of_a_kernel_counts_what_onnxruntime_computes() -> None:
    desc = layer_desc(Kernel("Conv", 16, 32, 10, kernel=3), "c")
    assert desc.macs == 32 * 10 * 10 * 16 * 9
    assert (desc.weight_params, desc.input_elems, desc.output_elems) == (
        32 * 16 * 9,
        16 * 100,
        32 * 100,
    )
    assert layer_desc(Kernel("MatMul", 64, 128, 8), "m").macs == 8 * 64 * 128


def test_memory_kernels_land_in_their_levels() -> None:
    spec = hwspecs.load("x86_avx2")
    kernels = memory_kernels([level.capacity for level in spec.memory])
    for kernel, level in zip(kernels, spec.memory, strict=True):
        assert spec.memory_level_for(4 * kernel.weight_params).name == level.name


def test_base_for_machine() -> None:
    assert base_for_machine("aarch64") == "arm_a72"
    assert base_for_machine("x86_64") in ("x86_avx2", "x86_avx512_vnni")
    with pytest.raises(SpecError, match="pass --base"):
        base_for_machine("riscv64")


def test_write_spec_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "mine.yaml"
    target.write_text("old\n")
    with pytest.raises(SpecError, match="threads"):
        write_spec({"base": "x86_avx2", "threads": 0}, target, "header")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.yaml"]
    write_spec(
        {"base": "x86_avx2", "threads": 2, "description": "mine"}, target, "first line\nsecond line"
    )
    text = target.read_text()
    assert text.startswith("# first line\n# second line\n")
    assert yaml.safe_load(text)["name"] == "mine"
    assert hwspecs.validate(target).threads == 2
