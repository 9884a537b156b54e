"""Properties over random small graphs: the printer ignores insertion order, save/load and
canonicalize keep what the model computes."""

from __future__ import annotations

import pathlib
import random
import tempfile

import numpy as np
import onnx
import onnx_ir as ir
from hypothesis import given, settings
from hypothesis import strategies as st
from models import run_ort

from mpqc import ir as mir
from mpqc import passes

_BINARY = ["Add", "Sub", "Mul", "Max"]
_UNARY = ["Relu", "Neg", "Abs", "Tanh", "Identity"]


@st.composite
def random_models(draw: st.DrawFn) -> onnx.ModelProto:
    """A DAG of elementwise ops over one input and a few constants (some subexpressions
    all-constant)."""
    constants = draw(st.integers(1, 3))
    values = ["x"] + [f"k{i}" for i in range(constants)]
    nodes = []
    for i in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(_BINARY + _UNARY))
        args = [draw(st.sampled_from(values)) for _ in range(2 if op in _BINARY else 1)]
        nodes.append(onnx.helper.make_node(op, args, [f"v{i}"]))
        values.append(f"v{i}")
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    inits = [
        onnx.numpy_helper.from_array(rng.normal(size=(2, 3)).astype(np.float32), f"k{i}")
        for i in range(constants)
    ]
    outputs = sorted({nodes[-1].output[0], draw(st.sampled_from([n.output[0] for n in nodes]))})
    graph = onnx.helper.make_graph(
        nodes,
        "random",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
        [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, [2, 3]) for o in outputs],
        inits,
    )
    return onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=10
    )


_FEEDS = {"x": np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)}


@settings(max_examples=40, deadline=None)
@given(random_models(), st.randoms(use_true_random=False))
def test_dump_does_not_depend_on_insertion_order(
    proto: onnx.ModelProto, shuffle: random.Random
) -> None:
    model = ir.from_proto(proto)
    expected = mir.dump(model)
    nodes = list(model.graph)
    shuffle.shuffle(nodes)
    for node in list(model.graph):
        model.graph.remove(node)
    model.graph.extend(nodes)
    assert mir.dump(model) == expected


@settings(max_examples=25, deadline=None)
@given(random_models())
def test_save_and_load_keep_the_dump(proto: onnx.ModelProto) -> None:
    model = ir.from_proto(proto)
    with tempfile.TemporaryDirectory() as folder:
        reloaded = mir.load(mir.save(model, pathlib.Path(folder) / "m.onnx"))
    assert mir.dump(reloaded) == mir.dump(model)


@settings(max_examples=25, deadline=None)
@given(random_models())
def test_canonicalize_keeps_the_outputs_and_folds_constant_subexpressions(
    proto: onnx.ModelProto,
) -> None:
    before = run_ort(proto, _FEEDS)
    model = ir.from_proto(proto)
    passes.get("canonicalize")()(model)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    after = run_ort(model, _FEEDS)
    assert [v.name for v in model.graph.outputs] == [o.name for o in proto.graph.output]
    for old, new in zip(before, after, strict=True):
        np.testing.assert_allclose(new, old, rtol=1e-5, atol=1e-6)
    for node in model.graph:  # nothing left that depends on constants only, except results
        if not any(out.is_graph_output() for out in node.outputs):
            assert any(v is not None and v.const_value is None for v in node.inputs), node
