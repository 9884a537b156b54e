"""Which nodes are quantizable layers, and the graph views."""

from __future__ import annotations

import numpy as np

from models import all_layers, small_cnn
from mpqc import ir as mir


def test_quantizable_layers_find_every_weighted_op() -> None:
    layers = mir.quantizable_layers(all_layers().graph)
    found = {(layer.node.op_type, layer.name): (layer.weight_index, layer.channel_axis, layer.activation_index) for layer in layers}
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
    np.testing.assert_array_equal(layer.weight_array(), model.graph.initializers["w1"].const_value.numpy())
    assert mir.constant_array(model.graph.inputs[0]) is None


def test_data_flow_edges_follow_values() -> None:
    graph = small_cnn().graph
    flow = mir.data_flow(graph)
    ops = {i: flow.nodes[i]["node"].op_type for i in flow.nodes}
    edges = {(ops[a], ops[b]) for a, b in flow.edges}
    assert ("Relu", "Add") in edges and ("Conv", "Add") in edges and ("Flatten", "Gemm") in edges
    assert flow.number_of_edges() == 10
