"""Small models for tests, built from ONNX text with deterministic random weights.

Weights are drawn from a seeded generator and attached as initializers, so the text stays readable
and every test sees the same numbers.
"""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import onnx_ir as ir

__all__ = ["SMALL_CNN", "build", "control_flow", "random_inputs", "small_cnn"]

SMALL_CNN = """
<ir_version: 10, opset_import: ["" : 17]>
small_cnn (float[N,3,8,8] image) => (float[N,10] logits) {
  c1 = Conv <pads=[1,1,1,1]> (image, w1, b1)
  r1 = Relu(c1)
  c2 = Conv <pads=[1,1,1,1], strides=[2,2]> (r1, w2, b2)
  r2 = Relu(c2)
  c3 = Conv <pads=[1,1,1,1]> (r2, w3, b3)
  s = Add(c3, r2)
  r3 = Relu(s)
  p = GlobalAveragePool(r3)
  f = Flatten(p)
  logits = Gemm <transB=1> (f, w4, b4)
}
"""

_SMALL_CNN_WEIGHTS = {
    "w1": (8, 3, 3, 3),
    "b1": (8,),
    "w2": (16, 8, 3, 3),
    "b2": (16,),
    "w3": (16, 16, 3, 3),
    "b3": (16,),
    "w4": (10, 16),
    "b4": (10,),
}


def build(
    text: str,
    weights: dict[str, tuple[int, ...]],
    seed: int = 0,
    arrays: dict[str, np.ndarray] | None = None,
    dtype: type = np.float32,
) -> onnx.ModelProto:
    """Parse ``text`` and attach He-initialised random initializers of the given shapes, of
    ``dtype`` (and ``arrays`` as given)."""
    proto = onnx.parser.parse_model(text)
    rng = np.random.default_rng(seed)
    for name, shape in weights.items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        array = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape).astype(dtype)
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    for name, array in (arrays or {}).items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    onnx.checker.check_model(proto, full_check=True)
    return proto


#: Two MatMuls around a Tanh: with an outlier in one sample, a range measured per run beats a
#: calibrated one (the dynamic-range tests). A fixed batch of 1: the sensitivity pass then runs
#: sample by sample, as the deployed model does (a batch's dynamic range is the whole batch's).
OUTLIERS = """
<ir_version: 10, opset_import: ["" : 17]>
outliers (float[1,6,64] x) => (float[1,6,32] y) {
  h = MatMul(x, w1)
  t = Tanh(h)
  y = MatMul(t, w2)
}
"""


def outliers() -> onnx.ModelProto:
    return build(OUTLIERS, {"w1": (64, 48), "w2": (48, 32)})


def small_cnn(seed: int = 0) -> ir.Model:
    return ir.from_proto(build(SMALL_CNN, _SMALL_CNN_WEIGHTS, seed))


def random_inputs(
    model: ir.Model | onnx.ModelProto, count: int, seed: int = 1, batch: int = 1
) -> list[dict[str, np.ndarray]]:
    """``count`` input dicts of standard-normal data, symbolic dims set to ``batch``: of the
    input's type where it is float16, else float32 (a bool or integer input is the caller's to
    fill)."""
    graph = model.graph
    inputs = graph.input if isinstance(model, onnx.ModelProto) else graph.inputs
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        sample = {}
        for value in inputs:
            if isinstance(model, onnx.ModelProto):
                dims = [
                    d.dim_value if d.HasField("dim_value") else batch
                    for d in value.type.tensor_type.shape.dim
                ]
                half = value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
            else:
                dims = [d if isinstance(d, int) else batch for d in value.shape]
                half = value.dtype == ir.DataType.FLOAT16
            sample[value.name] = rng.standard_normal(dims).astype(
                np.float16 if half else np.float32
            )
        samples.append(sample)
    return samples


# --- More builders for the spine's tests --------------------------------------------------------

CONV_BN = """
<ir_version: 10, opset_import: ["" : 17]>
conv_bn (float[N,3,6,6] x) => (float[N,4,6,6] y) {
  c = Conv <pads=[1,1,1,1]> (x, w, b)
  n = BatchNormalization <epsilon=0.001> (c, gamma, beta, mean, var)
  y = Relu(n)
}
"""


def small_cnn_on_disk(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """``small_cnn`` saved in ``folder`` with a calibration folder of ten batch-2 samples, as a
    user brings them to the command line: (model path, calibration folder)."""
    model = small_cnn()
    path = folder / "model.onnx"
    onnx.save(ir.to_proto(model), path)
    calib = folder / "calib"
    calib.mkdir()
    for i, sample in enumerate(random_inputs(model, 10, batch=2)):
        np.savez(calib / f"{i:03d}.npz", **sample)
    return path, calib


def conv_bn(seed: int = 0) -> ir.Model:
    """Conv -> BatchNormalization -> Relu, with a non-trivial BN (positive variance, off-center
    mean)."""
    var = np.random.default_rng(seed + 1).uniform(0.5, 2.0, 4).astype(np.float32)
    return ir.from_proto(
        build(
            CONV_BN,
            {"w": (4, 3, 3, 3), "b": (4,), "gamma": (4,), "beta": (4,), "mean": (4,)},
            seed,
            {"var": var},
        )
    )


EXPORTER_QUIRKS = """
<ir_version: 10, opset_import: ["" : 17]>
quirks (float[N,3,6,6] x) => (float[N,4] y) {
  wc = Constant <value = float[4,3,1,1] {1,0,0, 0,1,0, 0,0,1, 1,1,1}> ()
  c = Conv (x, wc)
  wt = Transpose <perm=[1,0]> (wk)
  shape = Constant <value = int64[2] {4, 4}> ()
  wr = Reshape (wt, shape)
  dead = Mul (x, x)
  dead2 = Relu (dead)
  p = GlobalAveragePool(c)
  f = Flatten(p)
  y = MatMul(f, wr)
}
"""


def exporter_quirks(seed: int = 0) -> ir.Model:
    """What exporters leave behind: Constant-node weights, a Transpose+Reshape of a weight, dead
    nodes."""
    return ir.from_proto(build(EXPORTER_QUIRKS, {"wk": (4, 4)}, seed))


ALL_LAYERS = """
<ir_version: 10, opset_import: ["" : 17]>
all_layers (float[1,3,6,6] x, int64[1,5] ids, float[1,4] other, float[4,4] w_in)
    => (float[1,2,7,7] up, float[1,6] g, float[1,4] m, float[1,5,4] e,
        float[1,4] mm, float[1,4] mi) {
  c = Conv <pads=[1,1,1,1]> (x, wconv)
  up = ConvTranspose (c, wdeconv)
  p = GlobalAveragePool(c)
  f = Flatten(p)
  g = Gemm <transB=1> (f, wgemm)
  m = MatMul(other, wmat)
  e = Gather(table, ids)
  other_col = Transpose <perm=[1,0]> (other)
  other_sq = MatMul(other_col, other)
  mm = MatMul(other, other_sq)
  mi = MatMul(other, w_in)
}
"""


def all_layers(seed: int = 0) -> ir.Model:
    """One of each quantizable op, plus a MatMul of two activations and one whose weight is a
    graph input."""
    weights = {
        "wconv": (4, 3, 3, 3),
        "wdeconv": (4, 2, 2, 2),
        "wgemm": (6, 4),
        "wmat": (4, 4),
        "table": (10, 4),
    }
    proto = onnx.parser.parse_model(ALL_LAYERS)
    rng = np.random.default_rng(seed)
    for name, shape in weights.items():
        proto.graph.initializer.append(
            onnx.numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)
        )
    # An initializer that is also a graph input can be overridden by the caller: not a constant
    # weight.
    proto.graph.initializer.append(
        onnx.numpy_helper.from_array(rng.normal(size=(4, 4)).astype(np.float32), "w_in")
    )
    return ir.from_proto(proto)


BRANCHES = """
<ir_version: 10, opset_import: ["" : 17]>
branches (float[N,4,6,6] x) => (float[N,4,6,6] y) {
  a = Conv <pads=[1,1,1,1]> (x, wa, ba)
  b = Conv <pads=[1,1,1,1]> (x, wb, bb)
  c = Conv <pads=[1,1,1,1]> (x, wc, bc)
  ab = Add(a, b)
  y = Add(ab, c)
}
"""


def branches(seed: int = 0) -> ir.Model:
    """One tensor read by three Convs: the activation-quantizer sharing case."""
    shapes = {
        "wa": (4, 4, 3, 3),
        "ba": (4,),
        "wb": (4, 4, 3, 3),
        "bb": (4,),
        "wc": (4, 4, 3, 3),
        "bc": (4,),
    }
    return ir.from_proto(build(BRANCHES, shapes, seed))


WITH_IF = """
<ir_version: 10, opset_import: ["" : 17]>
with_if (bool cond, float[2] x) => (float[2] y) {
  y = If (cond) <
    then_branch = then_g () => (float[2] t) { t = Relu(x) },
    else_branch = else_g () => (float[2] e) { e = Neg(x) }
  >
}
"""


def with_if() -> ir.Model:
    return ir.from_proto(onnx.parser.parse_model(WITH_IF))


CONTROL_FLOW = """
<ir_version: 10, opset_import: ["" : 17]>
control_flow (float[1,3,8,8] image, bool go, float[1,16] h0, float[5,1,16] xs)
    => (float[1,8,8,8] c, float[1,16] h, float[1,16] last, float[5,1,16] ys) {
  c = If (go) <
    then_branch = then_g () => (float[1,8,8,8] ct) {
      ct0 = Conv <pads=[1,1,1,1]> (image, wt, bt)
      ct = Relu(ct0)
    },
    else_branch = else_g () => (float[1,8,8,8] ce) {
      flipped = Neg(image)
      ce = Conv <pads=[1,1,1,1]> (flipped, we, be)
    }
  >
  h = Loop (trips, keep_going, h0) <
    body = step (int64 i, bool ci, float[1,16] hi) => (bool co, float[1,16] ho) {
      co = Identity(ci)
      m = MatMul(hi, wl)
      ho = Tanh(m)
    }
  >
  last, ys = Scan (h0, xs) <
    num_scan_inputs = 1,
    body = scan_step (float[1,16] s, float[1,16] x) => (float[1,16] so, float[1,16] y) {
      a = Add(s, x)
      y = MatMul(a, ws)
      so = Tanh(y)
    }
  >
}
"""


def control_flow(seed: int = 0) -> ir.Model:
    """Layers inside bodies: a Conv in each If branch (the else branch's reads a tensor of its
    own), a MatMul in a Loop body (3 trips) and one in a Scan body (5 steps)."""
    shapes = {
        "wt": (8, 3, 3, 3),
        "bt": (8,),
        "we": (8, 3, 3, 3),
        "be": (8,),
        "wl": (16, 16),
        "ws": (16, 16),
    }
    arrays = {"trips": np.array(3, np.int64), "keep_going": np.array(True)}
    return ir.from_proto(build(CONTROL_FLOW, shapes, seed, arrays))


def small_cnn_opset(opset: int, seed: int = 0) -> ir.Model:
    """``small_cnn`` declared at an older opset (its ops mean the same from opset 11 on)."""
    text = SMALL_CNN.replace('"" : 17', f'"" : {opset}').replace("ir_version: 10", "ir_version: 7")
    return ir.from_proto(build(text, _SMALL_CNN_WEIGHTS, seed))


def run_ort(
    model: ir.Model | onnx.ModelProto | bytes | str,
    feeds: dict[str, np.ndarray],
    level: str = "all",
) -> list[np.ndarray]:
    """Outputs of ``model`` on onnxruntime's CPU provider, single-threaded.

    ``level`` is the graph optimization level: "all" (what users get: fused integer kernels) or
    "basic" (the ONNX semantics of the QDQ graph, no kernel fusion).
    """
    import onnxruntime as ort

    if isinstance(model, ir.Model):
        model = ir.to_proto(model)
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    }[level]
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)
