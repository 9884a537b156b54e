"""Which nodes are quantizable layers, and the graph views."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from models import all_layers, small_cnn

from mpqc import ir as mir


def test_quantizable_layers_find_every_weighted_op() -> None:
    layers = mir.quantizable_layers(all_layers().graph)
    found = {
        (layer.node.op_type, layer.name): (
            layer.weight_index,
            layer.channel_axis,
            layer.activation_index,
        )
        for layer in layers
    }
    assert found == {
        ("Conv", "c"): (1, 0, 0),
        ("ConvTranspose", "up"): (1, 1, 0),
        ("Gemm", "g"): (1, 0, 0),
        ("MatMul", "m"): (1, 1, 0),
        ("Gather", "e"): (0, 0, None),
    }


def test_matmul_of_two_activations_and_graph_input_weights_are_not_layers() -> None:
    names = {layer.name for layer in mir.quantizable_layers(all_layers().graph)}
    assert "mm" not in names and "other_sq" not in names  # both operands computed at run time
    assert "mi" not in names  # its weight is an initializer the caller may override


def test_constant_array_and_layer_weights() -> None:
    model = small_cnn()
    layer = mir.quantizable_layers(model.graph)[0]
    assert layer.weight.name == "w1" and layer.activation is model.graph.inputs[0]
    np.testing.assert_array_equal(
        layer.weight_array(), model.graph.initializers["w1"].const_value.numpy()
    )
    assert mir.constant_array(model.graph.inputs[0]) is None


def test_data_flow_edges_follow_values() -> None:
    graph = small_cnn().graph
    flow = mir.data_flow(graph)
    ops = {i: flow.nodes[i]["node"].op_type for i in flow.nodes}
    edges = {(ops[a], ops[b]) for a, b in flow.edges}
    assert ("Relu", "Add") in edges and ("Conv", "Add") in edges and ("Flatten", "Gemm") in edges
    assert flow.number_of_edges() == 10


def test_recurrent_layers_carry_their_recurrence_weight() -> None:
    from models import build

    text = """
    <ir_version: 10, opset_import: ["" : 17]>
    rnn (float[5,1,8] x, float[1,18,6] rg_in) => (float[5,1,1,6] y, float[5,1,1,6] g) {
      y = LSTM <hidden_size=6> (x, w, r)
      g = GRU <hidden_size=6> (x, wg, rg_in)
    }
    """
    proto = build(text, {"w": (1, 24, 8), "r": (1, 24, 6), "wg": (1, 18, 8)})
    lstm, gru = mir.quantizable_layers(ir.from_proto(proto).graph)
    assert (lstm.weight_index, lstm.channel_axis, lstm.other_weight_indices) == (1, 1, (2,))
    assert (
        gru.other_weight_indices == ()
    )  # its R is computed at run time: only W is a constant weight


def test_layers_inside_bodies_are_listed_with_scoped_names_and_their_host() -> None:
    import onnx

    text = """
    <ir_version: 10, opset_import: ["" : 17]>
    outer (float[2,4] x, bool c) => (float[2,3] y) {
      y = If (c) <
        then_branch = t () => (float[2,3] a) { a = MatMul(x, w) },
        else_branch = e () => (float[2,3] b) {
          b = If (c) <
            then_branch = t2 () => (float[2,3] d) { d = MatMul(x, w) },
            else_branch = e2 () => (float[2,3] f) { f = Gemm(x, w) }
          >
        }
      >
    }
    """
    proto = onnx.parser.parse_model(text)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.ones((4, 3), np.float32), "w"))
    graph = ir.from_proto(proto).graph
    assert mir.quantizable_layers(graph, subgraphs=False) == []
    inner = mir.quantizable_layers(graph)
    assert [(layer.name, layer.host.outputs[0].name) for layer in inner] == [
        ("y/then/a", "y"),
        ("y/else/b/then/d", "b"),
        ("y/else/b/else/f", "b"),
    ]
    assert all(layer.in_subgraph for layer in inner)
    assert [len(layer.scope) for layer in inner] == [1, 2, 2]
