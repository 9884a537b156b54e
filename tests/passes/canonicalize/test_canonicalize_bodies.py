"""canonicalize inside If/Loop/Scan bodies: weight arithmetic on constants folds, a Conv's
BatchNorm folds, Identities and stale initializers go; what a body reads from outside is a
constant only when it is an initializer of an outer graph. The canonical model computes what the
float one does, on both branches, and compiles."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from models import build, random_inputs, run_ort

import mpqc
from mpqc.ir.layers import quantizable_layers
from mpqc.passes import CompileContext

BODIES = """
<ir_version: 10, opset_import: ["" : 17]>
bodies (float[1,3,8,8] image, bool go, float[1,16] h0, float[16] offset, float[4,1,16] xs)
    => (float[1,8,8,8] c, float[1,16] h, float[1,16] last, float[4,1,16] ys) {
  c = If (go) <
    then_branch = then_g () => (float[1,8,8,8] ct) {
      k = Transpose <perm=[1,0,2,3]> (kt)
      ct0 = Conv <pads=[1,1,1,1]> (image, k, bt)
      ct1 = BatchNormalization (ct0, gamma, beta, mean, var)
      ct2 = Identity(ct1)
      ct = Relu(ct2)
    },
    else_branch = else_g () => (float[1,8,8,8] ce) {
      ce0 = Conv <pads=[1,1,1,1]> (image, we, be)
      ce = Identity(ce0)
    }
  >
  h = Loop (trips, keep_going, h0) <
    body = step (int64 i, bool ci, float[1,16] hi) => (bool co, float[1,16] ho) {
      co = Identity(ci)
      two = Constant <value = float {2.0}> ()
      wl2 = Mul(wl, two)
      shift = Add(offset, two)
      m = MatMul(hi, wl2)
      ms = Add(m, shift)
      ho = Tanh(ms)
    }
  >
  last, ys = Scan (h0, xs) <
    num_scan_inputs = 1,
    body = scan_step (float[1,16] s, float[1,16] x) => (float[1,16] so, float[1,16] y) {
      a = Add(s, x)
      wst = Transpose(ws)
      y = MatMul(a, wst)
      so = Tanh(y)
    }
  >
}
"""


def _bodies() -> onnx.ModelProto:
    """Weight arithmetic and a BatchNorm in each kind of body; ``offset`` is an outer graph input
    the Loop body reads, which is not a constant."""
    shapes = {
        "kt": (3, 8, 3, 3),
        "bt": (8,),
        "gamma": (8,),
        "beta": (8,),
        "mean": (8,),
        "we": (8, 3, 3, 3),
        "be": (8,),
        "wl": (16, 16),
        "ws": (16, 16),
    }
    arrays = {
        "var": np.linspace(0.5, 2.0, 8).astype(np.float32),
        "trips": np.array(3, np.int64),
        "keep_going": np.array(True),
    }
    return build(BODIES, shapes, seed=0, arrays=arrays)


def _canonical() -> onnx.ModelProto:
    return mpqc.Pipeline("canonicalize", CompileContext()).run(_bodies())


def _body_ops(proto: onnx.ModelProto) -> dict[str, Counter[str]]:
    return {
        f"{node.op_type}.{attribute.name}": Counter(n.op_type for n in attribute.g.node)
        for node in proto.graph.node
        for attribute in node.attribute
        if attribute.HasField("g")
    }


def _body_initializers(proto: onnx.ModelProto) -> dict[str, list[str]]:
    return {
        f"{node.op_type}.{attribute.name}": [t.name for t in attribute.g.initializer]
        for node in proto.graph.node
        for attribute in node.attribute
        if attribute.HasField("g")
    }


def test_bodies_are_canonicalized_like_the_main_graph() -> None:
    canonical = _canonical()
    ops = _body_ops(canonical)
    assert ops["If.then_branch"] == Counter(Conv=1, Relu=1)  # Transpose, BN and Identity gone
    assert ops["If.else_branch"] == Counter(Conv=1)
    # the weight's Mul folds; the Add of the outer input `offset` does not; the Identity that
    # passes the Loop's condition through a body input stays
    assert ops["Loop.body"] == Counter(Identity=1, MatMul=1, Add=2, Tanh=1)
    assert ops["Scan.body"] == Counter(Add=1, MatMul=1, Tanh=1)
    initializers = _body_initializers(canonical)
    # the folded results are the bodies' own; the weights they replaced are gone everywhere
    assert sorted(initializers["If.then_branch"]) == ["ct0.bias_folded", "ct0.weight_folded"]
    assert sorted(initializers["Loop.body"]) == ["two", "wl2"]
    assert initializers["Scan.body"] == ["wst"]
    assert not {"kt", "gamma", "wl", "ws"} & {t.name for t in canonical.graph.initializer}
    onnx.checker.check_model(canonical, full_check=True)
    # every body layer reads its weight as a constant: quantizable
    names = [layer.name for layer in quantizable_layers(ir.from_proto(canonical).graph)]
    assert names == ["c/then/ct0", "c/else/ce", "h/body/m", "last/body/y"]


@pytest.mark.parametrize("go", [True, False])
def test_the_canonical_model_computes_what_the_float_one_does(go: bool) -> None:
    float_model = _bodies()
    (feeds,) = random_inputs(float_model, 1, seed=3)
    feeds["go"] = np.array(go)
    expected = run_ort(float_model, feeds)
    got = run_ort(_canonical(), feeds)
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-5)


def test_the_folded_bodies_compile_close_to_float() -> None:
    float_model = _bodies()
    samples = random_inputs(float_model, 10, seed=1)
    for index, sample in enumerate(samples):
        sample["go"] = np.array(index % 2 == 0)
    result = mpqc.compile(float_model, mpqc.CompileOptions(uniform="w8a8", calibration=samples))
    onnx.checker.check_model(result.model, full_check=True)
    for sample in samples[:2]:
        for want, have in zip(
            run_ort(float_model, sample), run_ort(result.model, sample), strict=True
        ):
            assert np.linalg.norm(have - want) <= 0.1 * np.linalg.norm(want)
