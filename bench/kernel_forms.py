"""``python -m bench.kernel_forms``: which onnxruntime kernel is fastest for each lowering form?
(RESULTS.md §7c)

One layer per model, in every form the lowering plan (``passes/lib/plan``) can give it, timed on
onnxruntime's CPU provider with one thread, in alternation (``hwspecs.kernels.measure_models``:
round-robin, median thread CPU time), on MiniLM's shapes (MatMuls at 128, 16 and 1 tokens, the
30522 x 384 word table looked up 128 times) and a 3x3 conv:

- MatMul: float; u8s8 QDQ (onnxruntime's integer kernel); a 4-bit weight behind DequantizeLinear
  with a u8 input quantizer (the mixed-mode form before MatMulNBits); MatMulNBits at 4 and 8 bits,
  accuracy levels 1 and 4, with and without the input's u8 quantizer in front;
- Gather: float; int8 rows scaled after the lookup; a 4-bit table behind a blocked
  DequantizeLinear; GatherBlockQuantized;
- Conv: float; u8s8 QDQ; a 4-bit weight behind DequantizeLinear;
- LSTM (ddddocr's: bidirectional, 512 in, 512 hidden, 33 steps) and GRU of the same size: float;
  8-bit W and R behind DequantizeLinear with a u8 input quantizer (mpqc's w8a8 before the LSTM had
  a kernel of its own) and without one (weights only); the LSTM also as onnxruntime's
  ``com.microsoft.DynamicQuantizeLSTM`` (``quantize_dynamic``'s form: int8 W and R transposed to
  [D, K, 4H], a scale per direction and gate column, the input and every step's hidden state
  quantized to uint8 in the kernel).
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mpqc.hwspecs.kernels import measure_models
from mpqc.passes.lib.matmul_nbits import pack_matmul_nbits

_BLOCK = 32
_RNG_SEED = 0


def _model(
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto],
    x: tuple[int, list[int]],
    y_shape: list[int],
) -> onnx.ModelProto:
    x_type, x_shape = x
    graph = helper.make_graph(
        nodes,
        "form",
        [helper.make_tensor_value_info("x", x_type, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        initializers,
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    return model


def _input_quantizer(dst: str = "xd") -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """A static u8 quantizer on ``x`` (the form mpqc gives a quantized activation)."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "as", "az"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "as", "az"], [dst]),
    ]
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "as"),
        helper.make_tensor("az", TensorProto.UINT8, [], [128]),
    ]
    return nodes, inits


def _output_quantizer(src: str) -> list[onnx.NodeProto]:
    return [
        helper.make_node("QuantizeLinear", [src, "as", "az"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "as", "az"], ["y"]),
    ]


def _per_channel(
    weight: np.ndarray, bits: int, axis: int
) -> tuple[list[onnx.TensorProto], onnx.NodeProto]:
    """Symmetric per-channel levels in INT8/INT4 and their DequantizeLinear to ``wd``."""
    qmax = 2 ** (bits - 1) - 1
    reduce = tuple(i for i in range(weight.ndim) if i != axis)
    scale = (np.abs(weight).max(axis=reduce) / qmax).astype(np.float32)
    shape = [-1 if i == axis else 1 for i in range(weight.ndim)]
    levels = np.clip(np.round(weight / scale.reshape(shape)), -qmax - 1, qmax).astype(np.int64)
    dtype = TensorProto.INT8 if bits == 8 else TensorProto.INT4
    inits = [
        helper.make_tensor("wq", dtype, levels.shape, levels.flatten().tolist()),
        numpy_helper.from_array(scale, "ws"),
    ]
    return inits, helper.make_node("DequantizeLinear", ["wq", "ws"], ["wd"], axis=axis)


def matmul_forms(m: int, k: int, n: int) -> dict[str, onnx.ModelProto]:
    weight = (np.random.default_rng(_RNG_SEED).standard_normal((k, n)) * 0.05).astype(np.float32)
    x, y = (TensorProto.FLOAT, [m, k]), [m, n]
    quantizer, quantizer_inits = _input_quantizer()
    forms = {
        "float": _model(
            [helper.make_node("MatMul", ["x", "w"], ["y"])],
            [numpy_helper.from_array(weight, "w")],
            x,
            y,
        )
    }
    w8, dq8 = _per_channel(weight, 8, 1)
    forms["u8s8 QDQ (integer kernel)"] = _model(
        [
            *quantizer,
            dq8,
            helper.make_node("MatMul", ["xd", "wd"], ["yf"]),
            *_output_quantizer("yf"),
        ],
        quantizer_inits + w8,
        x,
        y,
    )
    w4, dq4 = _per_channel(weight, 4, 1)
    forms["w4a8: DequantizeLinear + float MatMul"] = _model(
        [*quantizer, dq4, helper.make_node("MatMul", ["xd", "wd"], ["y"])],
        quantizer_inits + w4,
        x,
        y,
    )
    for bits in (4, 8):
        packed, scales, width = pack_matmul_nbits(weight, bits, _BLOCK)
        inits = [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "S")]
        for level in (1, 4):

            def nbits(src: str, level: int = level, width: int = width) -> onnx.NodeProto:
                return helper.make_node(
                    "MatMulNBits",
                    [src, "B", "S"],
                    ["y"],
                    domain="com.microsoft",
                    K=k,
                    N=n,
                    bits=width,
                    block_size=_BLOCK,
                    accuracy_level=level,
                )

            forms[f"MatMulNBits {bits}-bit, level {level}"] = _model([nbits("x")], inits, x, y)
            forms[f"u8 quantizer + MatMulNBits {bits}-bit, level {level}"] = _model(
                [*quantizer, nbits("xd")], quantizer_inits + inits, x, y
            )
    return forms


def gather_forms(rows: int, width: int, ids: int) -> dict[str, onnx.ModelProto]:
    table = (np.random.default_rng(_RNG_SEED).standard_normal((rows, width)) * 0.05).astype(
        np.float32
    )
    x, y = (TensorProto.INT64, [1, ids]), [1, ids, width]
    forms = {
        "float": _model(
            [helper.make_node("Gather", ["w", "x"], ["y"])],
            [numpy_helper.from_array(table, "w")],
            x,
            y,
        )
    }
    row_scale = (np.abs(table).max(axis=1) / 127).astype(np.float32)
    levels8 = np.round(table / row_scale[:, None]).astype(np.int8)
    forms["int8 rows, scaled after the lookup"] = _model(
        [
            helper.make_node("Gather", ["wq", "x"], ["g"]),
            helper.make_node("Gather", ["ws", "x"], ["gs"]),
            helper.make_node("Unsqueeze", ["gs", "last"], ["gs1"]),
            helper.make_node("DequantizeLinear", ["g", "one"], ["gd"]),
            helper.make_node("Mul", ["gd", "gs1"], ["y"]),
        ],
        [
            numpy_helper.from_array(levels8, "wq"),
            numpy_helper.from_array(row_scale, "ws"),
            numpy_helper.from_array(np.array([-1]), "last"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        ],
        x,
        y,
    )
    blocks = table.reshape(rows, width // _BLOCK, _BLOCK)
    block_scale = (np.abs(blocks).max(axis=2) / 7).astype(np.float32)
    levels4 = np.clip(np.round(blocks / block_scale[..., None]), -8, 7).astype(np.int64)
    int4 = [
        helper.make_tensor("wq", TensorProto.INT4, [rows, width], levels4.flatten().tolist()),
        numpy_helper.from_array(block_scale, "ws"),
    ]
    forms["int4 table: blocked DequantizeLinear + Gather"] = _model(
        [
            helper.make_node("DequantizeLinear", ["wq", "ws"], ["wd"], axis=1, block_size=_BLOCK),
            helper.make_node("Gather", ["wd", "x"], ["y"]),
        ],
        int4,
        x,
        y,
    )
    forms["GatherBlockQuantized 4-bit"] = _model(
        [
            helper.make_node(
                "GatherBlockQuantized",
                ["wq", "x", "ws"],
                ["y"],
                domain="com.microsoft",
                block_size=_BLOCK,
                gather_axis=0,
                quantize_axis=1,
            )
        ],
        int4,
        x,
        y,
    )
    return forms


def conv_forms(channels: int, size: int) -> dict[str, onnx.ModelProto]:
    shape = (channels, channels, 3, 3)
    weight = (np.random.default_rng(_RNG_SEED).standard_normal(shape) * 0.05).astype(np.float32)
    x, y = (TensorProto.FLOAT, [1, channels, size, size]), [1, channels, size, size]
    quantizer, quantizer_inits = _input_quantizer()
    pads = {"pads": [1, 1, 1, 1]}
    forms = {
        "float": _model(
            [helper.make_node("Conv", ["x", "w"], ["y"], **pads)],
            [numpy_helper.from_array(weight, "w")],
            x,
            y,
        )
    }
    w8, dq8 = _per_channel(weight, 8, 0)
    forms["u8s8 QDQ (integer kernel)"] = _model(
        [*quantizer, dq8, helper.make_node("Conv", ["xd", "wd"], ["yf"], **pads)]
        + _output_quantizer("yf"),
        quantizer_inits + w8,
        x,
        y,
    )
    w4, dq4 = _per_channel(weight, 4, 0)
    forms["w4a8: DequantizeLinear + float Conv"] = _model(
        [*quantizer, dq4, helper.make_node("Conv", ["xd", "wd"], ["y"], **pads)],
        quantizer_inits + w4,
        x,
        y,
    )
    return forms


def _rnn_weights(op: str, directions: int, size: int, hidden: int) -> tuple[np.ndarray, ...]:
    gates = {"LSTM": 4, "GRU": 3}[op]
    rng = np.random.default_rng(_RNG_SEED)
    w = (rng.standard_normal((directions, gates * hidden, size)) * 0.05).astype(np.float32)
    r = (rng.standard_normal((directions, gates * hidden, hidden)) * 0.05).astype(np.float32)
    b = (rng.standard_normal((directions, 2 * gates * hidden)) * 0.05).astype(np.float32)
    return w, r, b


def _rnn_dequantized(w: np.ndarray, r: np.ndarray) -> tuple[list[onnx.TensorProto], list]:
    """W and R as int8 per gate column behind DequantizeLinear to ``wd``/``rd``."""
    inits, nodes = [], []
    for name, array in (("w", w), ("r", r)):
        tensors, dq = _per_channel(array, 8, 1)
        for tensor in tensors:
            tensor.name = tensor.name.replace("w", name, 1)
        dq.input[:] = [f"{name}q", f"{name}s"]
        dq.output[:] = [f"{name}d"]
        inits += tensors
        nodes.append(dq)
    return inits, nodes


def rnn_forms(op: str, steps: int, size: int, hidden: int) -> dict[str, onnx.ModelProto]:
    directions = 2
    w, r, b = _rnn_weights(op, directions, size, hidden)
    x, y = (TensorProto.FLOAT, [steps, 1, size]), [steps, directions, 1, hidden]
    attributes = {"hidden_size": hidden, "direction": "bidirectional"}

    def rnn(src: str, weights: tuple[str, str]) -> onnx.NodeProto:
        return helper.make_node(op, [src, *weights, "b"], ["y"], **attributes)

    bias = [numpy_helper.from_array(b, "b")]
    floats = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(r, "r")]
    forms = {"float": _model([rnn("x", ("w", "r"))], floats + bias, x, y)}
    quantizer, quantizer_inits = _input_quantizer()
    int8, dequantize = _rnn_dequantized(w, r)
    forms["w8a8: u8 input + int8 W, R behind DequantizeLinear"] = _model(
        [*quantizer, *dequantize, rnn("xd", ("wd", "rd"))], quantizer_inits + int8 + bias, x, y
    )
    forms["w8 weights only: int8 W, R behind DequantizeLinear"] = _model(
        [*dequantize, rnn("x", ("wd", "rd"))], int8 + bias, x, y
    )
    if op == "LSTM":
        inits = list(bias)
        for name, array in (("w", w), ("r", r)):
            scale = (np.abs(array).max(axis=2) / 127).astype(np.float32)  # [D, 4H]
            levels = np.round(array / scale[..., None]).astype(np.int8).transpose(0, 2, 1)
            inits += [
                numpy_helper.from_array(np.ascontiguousarray(levels), f"{name}q"),
                numpy_helper.from_array(scale, f"{name}s"),
                numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{name}z"),
            ]
        node = helper.make_node(
            "DynamicQuantizeLSTM",
            ["x", "wq", "rq", "b", "", "", "", "", "ws", "wz", "rs", "rz"],
            ["y"],
            domain="com.microsoft",
            **attributes,
        )
        forms["DynamicQuantizeLSTM (quantize_dynamic)"] = _model([node], inits, x, y)
    return forms


_CASES: dict[str, tuple[Callable[[], dict[str, onnx.ModelProto]], str]] = {
    "MatMul 128x384x1536 (MiniLM FFN up, 128 tokens)": (lambda: matmul_forms(128, 384, 1536), ""),
    "MatMul 128x1536x384 (MiniLM FFN down)": (lambda: matmul_forms(128, 1536, 384), ""),
    "MatMul 16x384x384 (a 16-token query)": (lambda: matmul_forms(16, 384, 384), ""),
    "MatMul 1x384x384 (one token)": (lambda: matmul_forms(1, 384, 384), ""),
    "Gather 30522x384, 128 ids (MiniLM's word table)": (
        lambda: gather_forms(30522, 384, 128),
        "ids",
    ),
    "Conv 3x3 64->64 @28x28": (lambda: conv_forms(64, 28), ""),
    "LSTM bidirectional 512->512, 33 steps (ddddocr's)": (
        lambda: rnn_forms("LSTM", 33, 512, 512),
        "",
    ),
    "GRU bidirectional 512->512, 33 steps": (lambda: rnn_forms("GRU", 33, 512, 512), ""),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per model and case")
    parser.add_argument("--cases", default="", help="comma-separated words a case title holds")
    args = parser.parse_args(argv)
    print(f"# {platform.processor() or platform.machine()}, 1 thread, median thread CPU time")
    for title, (build, feed) in _CASES.items():
        if args.cases and not any(word in title for word in args.cases.split(",")):
            continue
        forms = build()
        feeds = None
        if feed:
            ids = np.random.default_rng(_RNG_SEED).integers(0, 30522, (1, 128))
            feeds = {"x": ids.astype(np.int64)}
        timings = measure_models(list(forms.values()), 1, args.seconds, feeds=feeds)
        base = timings[0].cpu_s
        print(f"\n## {title}")
        for name, timing in zip(forms, timings, strict=True):
            print(f"  {name:48s} {timing.cpu_s * 1e6:10.1f} us  {timing.cpu_s / base:6.2f}x float")


if __name__ == "__main__":
    main()
