"""The cost model prices the graph mpqc's lowering emits, term by term: conversions, emulated
weights, narrow-grid clips, activations a kernel cannot fuse, embedding tables, depthwise convs,
packed operands."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from mpqc import hwspecs
from mpqc.hwspecs import CostModel, LayerDesc

CONV = LayerDesc(
    "c",
    "Conv",
    macs=28_901_376,
    weight_params=36_864,
    input_elems=50_176,
    output_elems=50_176,
    kernel=(3, 3),
    c_in=64,
    c_out=64,
)


def roofline(model: CostModel, desc: LayerDesc, wbits: int | None, abits: int | None) -> float:
    """The roofline part alone: latency minus every overhead term, recomputed from the spec."""
    spec = model.spec
    precision = spec.precision(wbits, abits)
    moved = model.moved_bytes(desc, wbits, abits)
    return max(
        desc.macs / precision.rate(desc.depthwise), moved / spec.memory_level_for(moved).bandwidth
    )


def test_emulated_pair_pays_input_conversions_and_weight_unpack_but_no_output_dequantize() -> None:
    spec = hwspecs.load("x86_avx2")
    model = CostModel(spec)
    q, dq, conv = (
        spec.overhead("QuantizeLinear"),
        spec.overhead("DequantizeLinear"),
        spec.overhead("Conv"),
    )
    w4a8 = spec.precision(4, 8)
    expected = (
        roofline(model, CONV, 4, 8)
        + conv.time(CONV.output_elems)
        + q.time(CONV.input_elems)
        + dq.time(CONV.input_elems)
        + dq.fixed
        + w4a8.weight_unpack * CONV.weight_params
    )
    assert model.layer_cost(CONV, 4, 8).latency_s == pytest.approx(expected, rel=1e-12)
    with_bias = dataclasses.replace(CONV, bias_params=64)
    assert model.layer_cost(with_bias, 4, 8).latency_s - model.layer_cost(
        CONV, 4, 8
    ).latency_s == pytest.approx(dq.time(64))


def test_weight_unpack_can_differ_per_op() -> None:
    """onnxruntime runs DequantizeLinear(int8) -> MatMul as MatMulNBits (nothing unpacked per run),
    while a Conv behind the same DequantizeLinear dequantizes and repacks its weight on every
    run."""
    spec = hwspecs.load("x86_avx2")
    model = CostModel(spec)
    matmul = dataclasses.replace(CONV, op_type="MatMul", kernel=None)
    w8a16 = spec.precision(8, 16)
    assert w8a16.unpack("MatMul") == 0 and w8a16.unpack("Conv") == w8a16.weight_unpack > 0
    difference = model.layer_cost(CONV, 8, 16).latency_s - model.layer_cost(matmul, 8, 16).latency_s
    assert difference == pytest.approx(w8a16.weight_unpack * CONV.weight_params)


def test_an_op_without_an_integer_instruction_runs_its_float_kernel() -> None:
    """onnxruntime has no integer LSTM: at w8a8 it dequantizes the weights and runs the float
    LSTM."""
    spec = hwspecs.load("x86_avx2")
    assert not spec.runs_integer("LSTM")
    model = CostModel(spec)
    lstm = LayerDesc(
        "rnn",
        "LSTM",
        macs=20_000_000,
        weight_params=400_000,
        input_elems=20_000,
        output_elems=20_000,
        c_out=512,
    )
    w8a8, floating = model.layer_cost(lstm, 8, 8), model.layer_cost(lstm, None, None)
    assert not w8a8.native and w8a8.latency_s > floating.latency_s
    dq = spec.overhead("DequantizeLinear")
    # the float LSTM repacks the dequantized weights on every run: the spec's rate for that
    repack = spec.overhead("DequantizeLinear(LSTM)").per_element
    assert repack > dq.per_element
    assert w8a8.latency_s - floating.latency_s == pytest.approx(
        spec.overhead("QuantizeLinear").time(20_000) + dq.time(20_000) + dq.fixed + repack * 400_000
    )
    assert model.layer_cost(dataclasses.replace(lstm, op_type="Conv"), 8, 8).native


#: A bidirectional LSTM over 33 steps, 512 inputs and hidden units (ddddocr's).
_STEPS, _HIDDEN = 33, 512
_W = 2 * 4 * _HIDDEN * _HIDDEN
BIG_LSTM = LayerDesc(
    "rnn",
    "LSTM",
    macs=_STEPS * 2 * _W,
    weight_params=2 * _W,
    input_elems=_STEPS * _HIDDEN,
    output_elems=_STEPS * 2 * _HIDDEN,
    c_out=4 * _HIDDEN,
    steps=2 * _STEPS,
    step_weights=_W // 2,
    recurrent_macs=_STEPS * _W,
)


def test_each_step_of_a_recurrence_reads_its_weight_from_where_it_fits() -> None:
    """A step waits for the previous state: its recurrence weight (one direction's R) is read once
    per step, at the bandwidth of the level it fits in, and the op's fixed cost is a dispatch per
    step; the input projection is one GEMM over the sequence."""
    spec = hwspecs.load("x86_avx512_vnni")
    model = CostModel(spec)
    # twice the steps, the same input projection (GEMM MACs and bytes)
    twice = dataclasses.replace(
        BIG_LSTM,
        steps=2 * BIG_LSTM.steps,
        macs=BIG_LSTM.macs + BIG_LSTM.recurrent_macs,
        recurrent_macs=2 * BIG_LSTM.recurrent_macs,
    )
    floating = spec.precision(None, None)
    step_bytes = 4 * BIG_LSTM.step_weights  # float R, 4 MiB: past the caches
    assert spec.memory_level_for(step_bytes).name == "dram"
    step_s = max(
        BIG_LSTM.recurrent_macs / BIG_LSTM.steps / floating.throughput,
        step_bytes / spec.memory_level_for(step_bytes).bandwidth,
    )
    added = twice.steps - BIG_LSTM.steps
    assert model.layer_cost(twice, None, None).latency_s - model.layer_cost(
        BIG_LSTM, None, None
    ).latency_s == pytest.approx(added * (step_s + spec.overhead("LSTM").fixed), rel=1e-9)


def test_dynamic_quantize_lstm_runs_at_the_integer_rate_on_int8_recurrence() -> None:
    """onnxruntime's DynamicQuantizeLSTM reads its int8 W and R itself (no unpack) at the dynamic
    pair's integer rate, and each step streams a quarter of the float recurrence's bytes: on
    ddddocr's LSTM it is priced far below the float kernel, which is priced below the float kernel
    behind DequantizeLinear (bench/RESULTS.md §7c measures 2.2, 11.8 and 15.4 ms)."""
    spec = hwspecs.load("x86_avx512_vnni")
    model = CostModel(spec)
    dynamic = model.kernel(BIG_LSTM, 8, 8, dynamic=True, packed_kernel="DynamicQuantizeLSTM")
    assert (
        dynamic.kernel_kind == "integer" and dynamic.throughput == spec.precision(8, 8).throughput
    )
    kernel = model.layer_cost(BIG_LSTM, 8, 8, dynamic=True, packed_kernel="DynamicQuantizeLSTM")
    floating = model.layer_cost(BIG_LSTM, None, None)
    emulated = model.layer_cost(BIG_LSTM, 8, 8)
    assert kernel.latency_s < floating.latency_s / 4 < emulated.latency_s / 4


def test_runs_of_integer_layers_convert_only_at_their_boundaries() -> None:
    """Between two u8 x s8 kernels onnxruntime keeps the tensor in uint8: no Q/DQ runs there."""
    spec = hwspecs.load("x86_avx2")
    model = CostModel(spec)
    q, dq = spec.overhead("QuantizeLinear"), spec.overhead("DequantizeLinear")
    relayout = spec.overhead(
        spec.integer_layout["Conv"]
    )  # QLinearConv runs NHWC: a Transpose in and out
    island = model.layer_cost(CONV, 8, 8).latency_s
    inside = dataclasses.replace(CONV, input_from_layer=True, output_to_layers=True)
    assert island - model.layer_cost(inside, 8, 8).latency_s == pytest.approx(
        q.time(CONV.input_elems)
        + dq.time(CONV.output_elems)
        + relayout.time(CONV.input_elems)
        + relayout.time(CONV.output_elems)
    )
    # A float kernel behind DequantizeLinear (int4 weights) converts its input whatever its
    # neighbours are.
    assert model.layer_cost(inside, 4, 8).latency_s == model.layer_cost(CONV, 4, 8).latency_s
    assert (
        model.layer_cost(inside, None, None).latency_s
        == model.layer_cost(CONV, None, None).latency_s
    )


def test_activations_are_free_inside_a_float_kernel_and_separate_ops_after_an_integer_one() -> None:
    spec = hwspecs.load("x86_avx2")
    model = CostModel(spec)
    hardswish = dataclasses.replace(CONV, epilogue=("HardSwish",))
    relu = dataclasses.replace(CONV, epilogue=("Relu",))
    assert (
        model.layer_cost(hardswish, None, None).latency_s
        == model.layer_cost(CONV, None, None).latency_s
    ), "NCHWc Conv fuses it"
    for pair in [
        (8, 8),
        (4, 8),
        (8, 16),
    ]:  # integer kernels, and the plain-NCHW float Conv behind a weight DQ
        extra = (
            model.layer_cost(hardswish, *pair).latency_s - model.layer_cost(CONV, *pair).latency_s
        )
        assert (
            extra == pytest.approx(spec.overhead("HardSwish").time(CONV.output_elems)) and extra > 0
        )
    for pair in [(None, None), (8, 8), (4, 8)]:
        assert model.layer_cost(relu, *pair).latency_s == model.layer_cost(CONV, *pair).latency_s, (
            "fused, or clipped by the quantizer"
        )


def narrow_activation_spec(tmp_path: Path) -> hwspecs.HardwareSpec:
    document = {
        "base": "x86_avx2",
        "description": (
            "x86_avx2 with a 6-bit activation grid, which the lowering clips in float first"
        ),
        "bits": {"weights": [2, 4, 8, 16], "activations": [6, 8, 16]},
        "precisions": {
            "w8a6": {"emulated_as": "float", "throughput": "31 GMAC/s", "weight_unpack": "0.5 ns"}
        },
    }
    path = tmp_path / "narrow.yaml"
    path.write_text(yaml.safe_dump(document))
    return hwspecs.load(path)


def test_a_narrow_activation_grid_pays_its_float_clip_and_runs_the_float_kernel(
    tmp_path: Path,
) -> None:
    spec = narrow_activation_spec(tmp_path)
    model = CostModel(spec)
    w8a6, w8a8 = model.layer_cost(CONV, 8, 6), model.layer_cost(CONV, 8, 8)
    assert not w8a6.native and w8a6.latency_s > w8a8.latency_s
    clip = spec.overhead("Clip").time(CONV.input_elems)
    assert clip > 0
    q, dq, conv = (
        spec.overhead("QuantizeLinear"),
        spec.overhead("DequantizeLinear"),
        spec.overhead("Conv"),
    )
    expected = (
        roofline(model, CONV, 8, 6)
        + conv.time(CONV.output_elems)
        + clip
        + q.time(CONV.input_elems)
        + dq.time(CONV.input_elems)
        + dq.fixed
        + 0.5e-9 * CONV.weight_params
    )
    assert w8a6.latency_s == pytest.approx(expected, rel=1e-12)


WORD_TABLE = LayerDesc(
    "words",
    "Gather",
    macs=0,
    weight_params=30522 * 384,
    input_elems=16,
    output_elems=16 * 384,
    c_out=30522,
)


def test_an_emulated_embedding_table_is_dequantized_whole_every_run() -> None:
    """MiniLM: 4-bit word embeddings behind a DequantizeLinear run far slower than float
    (bench/RESULTS.md §5); 8-bit rows are gathered as integers and only they are scaled."""
    spec = hwspecs.load("x86_avx2")
    model = CostModel(spec)
    floating, w8, w4 = (model.layer_cost(WORD_TABLE, *p) for p in [(None, None), (8, 8), (4, 8)])
    assert floating.latency_s < 1e-4, "a float lookup reads 16 rows, not the 47 MB table"
    assert w8.latency_s < 2 * floating.latency_s + 1e-5
    assert w4.latency_s > 100 * floating.latency_s
    dq = spec.overhead("DequantizeLinear")
    assert w4.latency_s >= dq.per_element * WORD_TABLE.weight_params


def test_data_movement_on_the_quantized_tensor_costs_its_uint8_kernel() -> None:
    """onnxruntime moves a uint8 QuantizeLinear above a MaxPool: next to a float kernel (int4
    weights) the uint8 MaxPool is a slow NCHW loop; inside an integer run, a channel shuffle's
    Transpose is slow."""
    spec = hwspecs.load("x86_avx2")
    model = CostModel(spec)
    pooled = dataclasses.replace(CONV, input_ops=("MaxPool",))
    extra = model.layer_cost(pooled, 4, 8).latency_s - model.layer_cost(CONV, 4, 8).latency_s
    assert extra == pytest.approx(
        spec.overheads["MaxPool(uint8)"].time(CONV.input_elems)
        - spec.overhead("MaxPool").time(CONV.input_elems)
    )
    assert model.layer_cost(pooled, 8, 16).latency_s == model.layer_cost(CONV, 8, 16).latency_s, (
        "no uint16 propagation"
    )
    assert model.layer_cost(pooled, 8, 8).latency_s == model.layer_cost(CONV, 8, 8).latency_s, (
        "NHWC MaxPool is native"
    )
    shuffled = dataclasses.replace(CONV, input_ops=("Reshape", "Transpose", "Reshape"))
    assert model.layer_cost(shuffled, 8, 8).latency_s > model.layer_cost(CONV, 8, 8).latency_s


def test_depthwise_convs_run_at_their_own_rate() -> None:
    spec = hwspecs.load("x86_avx2")
    float_entry = spec.precision(None, None)
    assert (
        float_entry.depthwise_throughput is not None
        and float_entry.depthwise_throughput < float_entry.throughput / 3
    )
    dense = LayerDesc(
        "d",
        "Conv",
        macs=9 * 64 * 3136,
        weight_params=64 * 64 * 9,
        input_elems=64 * 3136,
        output_elems=64 * 3136,
        kernel=(3, 3),
        c_in=64,
        c_out=64,
    )
    depthwise = dataclasses.replace(dense, weight_params=64 * 9, groups=64, depthwise=True)
    model = CostModel(spec)
    assert (
        model.layer_cost(depthwise, None, None).latency_s
        > 2 * model.layer_cost(dense, None, None).latency_s
    )


def test_bit_serial_chips_move_operands_at_their_bit_width() -> None:
    """BISMO keeps a 6-bit tensor as 6 bit-planes: a memory-bound layer moves 6/8 of the 8-bit
    bytes, though the written ONNX model stores both in INT8."""
    edge = CostModel(hwspecs.load("bismo_edge"))
    elems = 112 * 112 * 96
    depthwise = LayerDesc(
        "dw",
        "Conv",
        macs=9 * elems,
        weight_params=9 * 96,
        input_elems=elems,
        output_elems=elems,
        kernel=(3, 3),
        groups=96,
        depthwise=True,
        c_in=96,
        c_out=96,
    )
    w8a8, w6a6 = edge.layer_cost(depthwise, 8, 8), edge.layer_cost(depthwise, 6, 6)
    assert w8a8.bound == w6a6.bound == "memory"
    assert w6a6.act_bytes == w8a8.act_bytes, "stored bytes stay in the ONNX container"
    assert w8a8.latency_s / w6a6.latency_s == pytest.approx(8 / 6, rel=0.01)
