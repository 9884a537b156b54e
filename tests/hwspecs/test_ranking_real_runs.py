"""Does the bundled spec of this kind of machine rank configurations the way onnxruntime runs
them?"""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from mpqc import hwspecs
from mpqc.hwspecs.kernels import time_models
from mpqc.hwspecs.profiling import RANKING_CHAIN, predicted_latency, ranking_check

pytestmark = pytest.mark.slow

X86_AVX2_ONLY = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64")
    or "avx512_vnni"
    in (Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""),
    reason="x86_avx2 describes an AVX2 machine without VNNI",
)


@X86_AVX2_ONLY
def test_bundled_x86_avx2_ranks_mixed_configurations_like_onnxruntime() -> None:
    check = ranking_check(hwspecs.load("x86_avx2"), threads=1, min_seconds=0.3)
    assert check.spearman >= 0.7, list(
        zip(check.configs, check.measured_s, check.predicted_s, strict=True)
    )


@X86_AVX2_ONLY
def test_uniform_configurations_order() -> None:
    """The facts PEERS.md rests on: u8 x s8 beats float; int4 weights and 16-bit activations lose
    to it."""
    from mpqc.hwspecs.kernels import build_chain

    spec = hwspecs.load("x86_avx2")
    names = ["u8s8", "float", "u8s4", "u16s8"]
    layers = [[(k, name) for k in RANKING_CHAIN] for name in names]
    measured = dict(zip(names, time_models([build_chain(c) for c in layers], 1, 0.3), strict=True))
    predicted = {name: predicted_latency(spec, c) for name, c in zip(names, layers, strict=True)}
    for faster, slower in [("u8s8", "float"), ("float", "u8s4"), ("float", "u16s8")]:
        assert measured[faster] < measured[slower]
        assert predicted[faster] < predicted[slower]


@X86_AVX2_ONLY
def test_cost_pass_ranks_lowered_digits_configurations_like_onnxruntime() -> None:
    """bench.latency on the embedded model: float, uniform, random mixes and searched
    configurations, lowered by mpqc and timed by onnxruntime (a generous bound: a tiny model on a
    shared machine)."""
    from bench.latency import digits_case, run_case, score

    spec = hwspecs.load("x86_avx2")
    rows = run_case(
        digits_case(),
        {"x86_avx2": spec},
        "x86_avx2",
        mixes=3,
        seed=0,
        min_seconds=0.1,
        log=lambda _: None,
    )
    assert len(rows) >= 8
    assert score(rows, "x86_avx2")["spearman"] >= 0.6, [
        (r.config, r.measured_s, r.predicted_s) for r in rows
    ]
