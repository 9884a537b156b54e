"""Cost-model properties, and published numbers it must reproduce (MOHAQ's BitFusion and SiLago
objectives, HAQ's BISMO w·a cycle law)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpqc import hwspecs
from mpqc.hwspecs import CostModel, LayerDesc, UnsupportedPrecisionError

BIT_FLEXIBLE = ["bitfusion", "bismo_edge", "bismo_cloud", "silago", "generic"]


def conv(
    macs: int = 10**9, params: int = 4096, elems: int = 1024, c_out: int | None = 64, bias: int = 0
) -> LayerDesc:
    """A layer with many MACs per byte: compute-bound on every bundled spec."""
    return LayerDesc(
        "conv",
        "Conv",
        macs=macs,
        weight_params=params,
        input_elems=elems,
        output_elems=elems,
        bias_params=bias,
        c_out=c_out,
    )


layers = st.builds(
    lambda macs_per_param, params, elems, c_out: LayerDesc(
        "l",
        "Conv",
        macs=macs_per_param * params,
        weight_params=params,
        input_elems=elems,
        output_elems=elems,
        c_out=c_out,
    ),
    st.integers(1, 4096),
    st.integers(1, 2_000_000),
    st.integers(1, 2_000_000),
    st.one_of(st.none(), st.integers(1, 512)),
)


@pytest.mark.parametrize("name", BIT_FLEXIBLE)
@settings(max_examples=40, deadline=None)
@given(desc=layers)
def test_cost_never_rises_as_bits_go_down_on_bit_flexible_chips(name: str, desc: LayerDesc) -> None:
    spec = hwspecs.load(name)
    model = CostModel(spec)
    for w, a in spec.supported_pairs():
        cost = model.layer_cost(desc, w, a)
        for lower_w, lower_a in [(w - 1, a), (w, a - 1)]:
            if not spec.supports(lower_w, lower_a):
                continue
            lower = model.layer_cost(desc, lower_w, lower_a)
            assert lower.latency_s <= cost.latency_s * (1 + 1e-12)
            assert lower.energy_j <= cost.energy_j * (1 + 1e-12)
            assert lower.weight_bytes <= cost.weight_bytes
            assert lower.bops < cost.bops


@pytest.mark.parametrize("name", hwspecs.names())
def test_roofline_bound(name: str) -> None:
    spec = hwspecs.load(name)
    model = CostModel(spec)
    elementwise_like = LayerDesc(
        "dw",
        "Conv",
        macs=100,
        weight_params=50_000_000,
        input_elems=10_000_000,
        output_elems=10_000_000,
    )
    for w, a in spec.supported_pairs()[:4]:
        assert model.layer_cost(elementwise_like, w, a).bound == "memory"
        assert model.layer_cost(conv(macs=10**11), w, a).bound == "compute"


def test_memory_bound_latency_is_bytes_over_bandwidth_of_the_level_it_fits() -> None:
    spec = hwspecs.load("bitfusion")
    model = CostModel(spec)
    small = LayerDesc(
        "s", "Conv", macs=1, weight_params=8_000, input_elems=16_000, output_elems=16_000, c_out=1
    )
    big = LayerDesc(
        "b",
        "Conv",
        macs=1,
        weight_params=8_000_000,
        input_elems=16_000,
        output_elems=16_000,
        c_out=1,
    )
    for desc, level in [(small, "sram"), (big, "dram")]:
        cost = model.layer_cost(desc, 8, 8)
        bandwidth = next(m.bandwidth for m in spec.memory if m.name == level)
        assert cost.bound == "memory"
        assert cost.latency_s == pytest.approx(
            (cost.weight_bytes + cost.act_bytes) / bandwidth, rel=1e-12
        )


def test_bitfusion_w4a4_is_four_times_w8a8_on_a_compute_bound_layer() -> None:
    model = CostModel(hwspecs.load("bitfusion"))
    w8a8, w4a4 = model.layer_cost(conv(), 8, 8), model.layer_cost(conv(), 4, 4)
    assert w8a8.bound == w4a4.bound == "compute"
    assert w8a8.latency_s / w4a4.latency_s == pytest.approx(4.0, rel=1e-9)


def test_mohaq_bitfusion_speedup_is_reproduced() -> None:
    """MOHAQ (METHODS.md §5): speedup = Σ MAC_l·s(w_l, a_l) / Σ MAC_l, s = 256/(w·a) capped at 64,
    against 16-bit.  Published anchors: 16x16 -> 1, 8x8 -> 4, 4x4 -> 16, <= 2x2 -> 64."""
    model = CostModel(hwspecs.load("bitfusion"))
    for (w, a), published in {
        (16, 16): 1,
        (8, 8): 4,
        (4, 4): 16,
        (2, 2): 64,
        (2, 8): 16,
        (4, 16): 4,
    }.items():
        assert model.layer_cost(conv(), 16, 16).latency_s / model.layer_cost(
            conv(), w, a
        ).latency_s == pytest.approx(published)
    config = [(3 * 10**9, (8, 8)), (10**9, (4, 4)), (2 * 10**9, (2, 8)), (10**9, (16, 2))]
    mohaq = sum(macs * min(256 / (w * a), 64) for macs, (w, a) in config) / sum(
        macs for macs, _ in config
    )
    per_layer = [
        model.layer_cost(conv(macs), 16, 16).latency_s
        / model.layer_cost(conv(macs), w, a).latency_s
        for macs, (w, a) in config
    ]
    ours = sum(macs * s for (macs, _), s in zip(config, per_layer, strict=True)) / sum(
        macs for macs, _ in config
    )
    assert ours == pytest.approx(mohaq, rel=1e-12)
    assert mohaq == pytest.approx((3 * 4 + 16 + 2 * 16 + 8) / 7)


def test_mohaq_silago_speedup_and_energy_are_reproduced() -> None:
    """MOHAQ SiLago: s(b) = 16/b; energy = stored bits x 0.08 pJ + MAC x e(b) with e(16) = 1.666,
    e(8) = 1.084/2, e(4) = 0.613/4 pJ."""
    model = CostModel(hwspecs.load("silago"))
    weights_only = LayerDesc(
        "fc",
        "Gemm",
        macs=2_000_000,
        weight_params=2_000_000,
        input_elems=0,
        output_elems=0,
        c_out=1,
    )
    e = {16: 1.666e-12, 8: 1.084e-12 / 2, 4: 0.613e-12 / 4}
    base = model.layer_cost(weights_only, 16, 16)
    for b in (16, 8, 4):
        cost = model.layer_cost(weights_only, b, b)
        assert base.latency_s / cost.latency_s == pytest.approx(16 / b)
        stored_bits = 2_000_000 * b + 32  # + the one float32 scale
        assert cost.energy_j == pytest.approx(stored_bits * 0.08e-12 + 2_000_000 * e[b], rel=1e-12)
    with pytest.raises(UnsupportedPrecisionError, match="w16a16, w8a8, w4a4"):
        model.layer_cost(weights_only, 4, 8)


@pytest.mark.parametrize("name", ["bismo_edge", "bismo_cloud"])
def test_haq_bismo_cycles_are_proportional_to_w_times_a(name: str) -> None:
    model = CostModel(hwspecs.load(name))
    per_bit_op = {
        model.layer_cost(conv(), w, a).latency_s / (w * a) for w in range(1, 9) for a in range(1, 9)
    }
    assert max(per_bit_op) == pytest.approx(min(per_bit_op), rel=1e-12)


def test_bismo_edge_makes_more_layers_memory_bound_than_cloud() -> None:
    """HAQ: edge and cloud want different policies because the edge board's DRAM is slow."""
    elems = 112 * 112 * 96  # MobileNet-V2's first expanded depthwise 3x3 layer
    depthwise = LayerDesc(
        "dw",
        "Conv",
        macs=9 * elems,
        weight_params=9 * 96,
        input_elems=elems,
        output_elems=elems,
        kernel=(3, 3),
        depthwise=True,
        groups=96,
        c_in=96,
        c_out=96,
    )
    edge, cloud = CostModel(hwspecs.load("bismo_edge")), CostModel(hwspecs.load("bismo_cloud"))
    assert edge.layer_cost(depthwise, 4, 4).bound == "memory"
    assert cloud.layer_cost(depthwise, 4, 4).bound == "compute"


@settings(max_examples=60, deadline=None)
@given(
    desc=layers,
    w=st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 16]),
    a=st.sampled_from([1, 2, 4, 8, 16]),
)
def test_bops_and_size_are_exact(desc: LayerDesc, w: int, a: int) -> None:
    model = CostModel(hwspecs.load("generic"))
    cost = model.layer_cost(desc, w, a)
    container = {1: 2, 2: 2, 3: 4, 4: 4, 5: 8, 6: 8, 7: 8, 8: 8, 16: 16}
    assert cost.bops == desc.macs * w * a
    assert cost.weight_bytes == math.ceil(desc.weight_params * container[w] / 8) + 4 * (
        desc.c_out or 1
    )
    assert cost.act_bytes == 2 * math.ceil(desc.input_elems * container[a] / 8)
    floating = model.layer_cost(desc, None, None)
    assert floating.bops == desc.macs * 32 * 32
    assert floating.weight_bytes == 4 * desc.weight_params


def test_size_counts_scales_and_bias_and_rounds_up_per_tensor() -> None:
    model = CostModel(hwspecs.load("x86_avx2"))
    odd = LayerDesc(
        "fc", "Gemm", macs=7, weight_params=7, input_elems=1, output_elems=1, bias_params=3, c_out=3
    )
    assert (
        model.layer_cost(odd, 4, 8).weight_bytes == 4 + 3 * 4 + 3 * 4
    )  # ceil(7·4/8) + scales + bias
    assert model.layer_cost(odd, 8, 8).weight_bytes == 7 + 3 * 4 + 3 * 4
    assert model.layer_cost(odd, None, None).weight_bytes == 7 * 4 + 3 * 4


def test_cpu_emulated_pairs_save_bytes_not_time() -> None:
    model = CostModel(hwspecs.load("x86_avx2"))
    layer = conv(macs=28_901_376, params=36_864, elems=50_176)
    floating, w8a8, w4a8, w8a16 = (
        model.layer_cost(layer, *p) for p in [(None, None), (8, 8), (4, 8), (8, 16)]
    )
    assert w8a8.native and not w4a8.native and not w8a16.native
    assert w8a8.latency_s < floating.latency_s, "u8 x s8 is onnxruntime's fast path"
    assert w4a8.weight_bytes < w8a8.weight_bytes
    assert w4a8.latency_s > w8a8.latency_s and w4a8.latency_s > floating.latency_s, (
        "int4 weights are dequantized each run"
    )
    assert w8a16.latency_s > floating.latency_s, "16-bit activations are a slow path (PEERS.md)"


def test_quantized_layers_pay_qdq_overhead_and_float_layers_do_not() -> None:
    spec = hwspecs.load("x86_avx2")
    model = CostModel(spec)
    tiny = LayerDesc(
        "t", "MatMul", macs=16, weight_params=16, input_elems=4, output_elems=4, c_out=4
    )
    q, dq, default = (
        spec.overhead("QuantizeLinear"),
        spec.overhead("DequantizeLinear"),
        spec.overhead("MatMul"),
    )
    compute = max(
        16 / spec.precision(8, 8).throughput,
        (model.weight_bytes(tiny, 8) + 8) / spec.memory[0].bandwidth,
    )
    assert model.layer_cost(tiny, 8, 8).latency_s == pytest.approx(
        compute + default.time(4) + q.time(4) + dq.time(4)
    )
    float_compute = max(
        16 / spec.precision(None, None).throughput, (64 + 32) / spec.memory[0].bandwidth
    )
    assert model.layer_cost(tiny, None, None).latency_s == pytest.approx(
        float_compute + default.time(4)
    )


def test_signed_activations_use_the_signed_entry_when_the_spec_has_one() -> None:
    vnni = CostModel(hwspecs.load("x86_avx512_vnni"))
    assert (
        vnni.layer_cost(conv(), 8, 8, act_signed=True).latency_s
        > vnni.layer_cost(conv(), 8, 8).latency_s
    )
    bitfusion = CostModel(hwspecs.load("bitfusion"))
    assert bitfusion.layer_cost(conv(), 8, 8, act_signed=True) == bitfusion.layer_cost(conv(), 8, 8)


def test_reference_cost_is_float_on_cpus_and_w8a8_on_integer_accelerators() -> None:
    layer = conv()
    cpu = CostModel(hwspecs.load("x86_avx2"))
    assert cpu.reference_cost(layer) == cpu.layer_cost(layer, None, None)
    accelerator = CostModel(hwspecs.load("bitfusion"))
    assert accelerator.reference_cost(layer) == accelerator.layer_cost(layer, 8, 8)


def test_supported_pairs_intersect_and_sort_high_to_low() -> None:
    spec = hwspecs.load("bitfusion")
    assert spec.supported_pairs([4, 8], [8]) == [(8, 8), (4, 8)]
    assert spec.supported_pairs([2, 4, 8], [4, 8]) == [
        (8, 8),
        (4, 8),
        (8, 4),
        (2, 8),
        (4, 4),
        (2, 4),
    ]
    assert spec.supported_pairs([3], None) == []
    cpu = hwspecs.load("x86_avx2")
    assert cpu.supported_pairs([4, 8], [8, 16]) == [(8, 16), (4, 16), (8, 8), (4, 8)]
    pairs = hwspecs.load("bismo_edge").supported_pairs()
    assert len(pairs) == 64 and pairs[0] == (8, 8) and pairs[-1] == (1, 1)


def test_unsupported_and_half_float_pairs_are_errors() -> None:
    model = CostModel(hwspecs.load("bitfusion"))
    with pytest.raises(UnsupportedPrecisionError, match="cannot run float"):
        model.layer_cost(conv(), None, None)
    with pytest.raises(UnsupportedPrecisionError, match="cannot run w3a8"):
        model.layer_cost(conv(), 3, 8)
    with pytest.raises(UnsupportedPrecisionError, match="give both"):
        model.layer_cost(conv(), 8, None)


def test_layer_desc_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="macs must be a non-negative int"):
        LayerDesc("x", "Conv", macs=-1, weight_params=1, input_elems=1, output_elems=1)
    with pytest.raises(ValueError, match="weight_params"):
        LayerDesc("x", "Conv", macs=1, weight_params=1.5, input_elems=1, output_elems=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="groups"):
        LayerDesc("x", "Conv", macs=1, weight_params=1, input_elems=1, output_elems=1, groups=0)


@pytest.mark.parametrize("name", ["x86_avx2", "bismo_edge", "arm_a72"])
@settings(max_examples=30, deadline=None)
@given(desc=layers)
def test_latency_is_the_roofline_plus_overheads_and_energy_adds_up(
    name: str, desc: LayerDesc
) -> None:
    spec = hwspecs.load(name)
    model = CostModel(spec)
    for w, a in spec.supported_pairs()[:3]:
        cost = model.layer_cost(desc, w, a)
        moved = model.moved_bytes(desc, w, a)
        if not spec.packed_operands:
            assert moved == cost.weight_bytes + cost.act_bytes
        level = spec.memory_level_for(moved)
        precision = spec.precision(w, a)
        compute_s, memory_s = desc.macs / precision.throughput, moved / level.bandwidth
        assert cost.latency_s >= max(compute_s, memory_s)
        assert cost.bound == ("compute" if compute_s >= memory_s else "memory")
        assert cost.energy_j == pytest.approx(
            desc.macs * precision.energy_per_mac + moved * level.energy_per_byte
        )


def test_units_round_trip_and_reject_other_dimensions() -> None:
    from mpqc.hwspecs import units

    for value, dimension in [
        (48e9, "throughput"),
        (12.8e9, "bandwidth"),
        (1441792, "bytes"),
        (7e-11, "energy"),
        (3.3e-10, "time"),
    ]:
        assert units.to_base(units.format_quantity(value, dimension), dimension) == pytest.approx(
            value
        )
    assert units.to_base("1 TOPS", "throughput") == 5e11, "one MAC is two ops"
    assert units.to_base("3MB", "bytes") == 3e6 and units.to_base("2ms", "time") == 2e-3
    with pytest.raises(ValueError, match="not a valid bandwidth quantity; allowed: .*GB/s"):
        units.to_base("5 pJ", "bandwidth")
