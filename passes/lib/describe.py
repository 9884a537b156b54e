"""From IR layers to ``LayerDesc``: the facts the cost model and the search need, with static
shapes.

The cost model knows nothing of ONNX, so this is where shapes become MACs and element counts. Costs
need concrete sizes: symbolic dims are resolved from the user's ``--shape`` overrides; a leading
symbolic dim of a graph input is taken to be the batch and set to 1 (with a note), and any other
unresolved dim is an error that names it, because guessing a sequence length or image size would
make every latency number fiction.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import onnx
import onnx_ir as ir

from mpqc.hwspecs import LayerDesc
from mpqc.ir.layers import Layer, constant_array, node_name
from mpqc.passes.infra.base import PassInputError
from mpqc.passes.infra.context import CompileContext
from mpqc.passes.lib.observed_shapes import observe_shapes
from mpqc.passes.lib.runtime import external_folder

__all__ = ["check_shapes", "describe", "static_shapes", "trip_count"]

#: The largest size a dim can have (ONNX dims are int64).
_MAX_DIM = 2**63 - 1


def _input_shape(
    value: onnx.ValueInfoProto, context: CompileContext
) -> tuple[tuple[int, ...] | None, str]:
    """A whole input's shape from ``shapes[INPUT] = (d0, d1, ...)`` or the first calibration
    sample."""
    given = context.shapes.get(value.name)
    if isinstance(given, tuple):
        return given, "shapes"
    if context.calibration is not None and len(context.calibration):
        sample = next(iter(context.calibration))
        if value.name in sample:
            return tuple(int(d) for d in sample[value.name].shape), "calibration"
    return None, ""


def check_shapes(model: ir.Model, shapes: Mapping[str, int | tuple[int, ...]]) -> None:
    """Refuse a ``shapes`` entry that would be ignored or cannot hold, before any work.

    ``DIM=SIZE`` must name a symbolic dim of a graph input and ``INPUT=d0,d1,...`` a graph input,
    with as many dims as it has and its static dims unchanged; a size must fit ONNX's int64. An
    entry that matches nothing would otherwise be dropped without a word.
    """
    inputs = {value.name: value for value in model.graph.inputs}
    symbolic = {
        dim.value
        for value in inputs.values()
        for dim in (value.shape or ())
        if isinstance(dim, ir.SymbolicDim) and dim.value
    }
    for name, given in shapes.items():
        sizes = given if isinstance(given, tuple) else (given,)
        if not all(1 <= size <= _MAX_DIM for size in sizes):
            raise PassInputError(f"{name}: a size must be between 1 and 2**63 - 1", field="shapes")
        if not isinstance(given, tuple):
            if name not in symbolic:
                known = ", ".join(sorted(symbolic)) or "none"
                raise PassInputError(
                    f"no graph input has a symbolic dim named {name!r} (the symbolic dims: "
                    f"{known}): give DIM=SIZE for one of them or INPUT=d0,d1,...",
                    field="shapes",
                )
            continue
        if name not in inputs:
            raise PassInputError(
                f"{name}= names no graph input (the inputs: {', '.join(inputs)})", field="shapes"
            )
        dims = inputs[name].shape
        if dims is None:
            continue
        if len(given) != len(dims):
            raise PassInputError(
                f"{name}= gives {len(given)} dims, the input has {len(dims)}", field="shapes"
            )
        for axis, (dim, size) in enumerate(zip(dims, given, strict=True)):
            if isinstance(dim, int) and dim != size:
                raise PassInputError(
                    f"{name}= sets axis {axis} to {size}, but the input's axis {axis} is fixed at "
                    f"{dim}: give {dim} there",
                    field="shapes",
                )


def static_shapes(model: ir.Model, context: CompileContext) -> dict[str, tuple[int, ...]]:
    """Concrete shapes of every tensor, by name, after resolving symbolic input dims.

    In order: a whole input's shape from ``shapes[INPUT] = (d0, d1, ...)``; a named dim from
    ``shapes[DIM] = SIZE``; the shape of the first calibration sample (what the model will really
    see); a leading dim taken as a batch of 1. Anything else is an error naming the dim.
    """
    check_shapes(model, context.shapes)
    proto = ir.to_proto(model)
    assumed: list[str] = []
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            continue
        whole, source = _input_shape(value, context)
        for axis, dim in enumerate(dims):
            if dim.HasField("dim_value"):
                continue
            named = context.shapes.get(dim.dim_param) if dim.dim_param else None
            if whole is not None and source == "shapes":
                dim.dim_value = whole[axis]
            elif isinstance(named, int):
                dim.dim_value = named
            elif whole is not None and len(whole) == len(dims):
                dim.dim_value = whole[axis]
                assumed.append(f"{value.name}[{axis}]={whole[axis]} (first calibration sample)")
            elif axis == 0:
                dim.dim_value = 1
                assumed.append(f"{value.name}[0]=1 (batch)")
            else:
                by_name = f"{dim.dim_param}=SIZE or " if dim.dim_param else ""
                raise PassInputError(
                    f"input '{value.name}' has a symbolic dim '{dim.dim_param or '?'}' at axis "
                    f"{axis}: give {by_name}{value.name}=d0,d1,...",
                    field="shapes",
                )
    if assumed:
        context.note(
            "cost: symbolic dims set to " + ", ".join(assumed) + " (give their sizes to override)"
        )
    inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    shapes: dict[str, tuple[int, ...]] = {}
    for graph in _graphs(inferred.graph):
        for value in [*graph.input, *graph.value_info, *graph.output]:
            dims = value.type.tensor_type.shape.dim
            if dims and all(d.HasField("dim_value") for d in dims):
                shapes[value.name] = tuple(d.dim_value for d in dims)
            elif value.type.tensor_type.HasField("shape") and not dims:
                shapes[value.name] = ()
    computed = [
        *(
            value.name
            for body in _graphs(proto.graph)
            if body is not proto.graph
            for value in body.input
        ),
        *(out for graph in _graphs(proto.graph) for node in graph.node for out in node.output),
    ]
    missing = [name for name in computed if name and name not in shapes]
    if missing and context.calibration is not None and len(context.calibration):
        observed = observe_shapes(
            proto, external_folder(model), _readable(model, missing), context.calibration
        )
        shapes.update(observed.largest())
        context.note(
            "cost: shapes onnx could not infer were read from a run on the first calibration "
            "sample that computes them"
        )
        varying = [
            f"'{name}' {'/'.join('x'.join(map(str, shape)) for shape in found)}"
            for name, found in observed.varying().items()
        ]
        if varying:
            context.note(
                "cost: values inside bodies change shape from one trip to the next ("
                + ", ".join(varying[:4])
                + (f" and {len(varying) - 4} more" if len(varying) > 4 else "")
                + "): their layers are priced at the largest shape, on every trip"
            )
    return shapes


def _readable(model: ir.Model, names: list[str]) -> list[str]:
    """Of ``names``, those whose shape a run can read: every main-graph value, and tensors inside
    bodies (a body's shape probe cannot take a sequence's shape)."""
    main = {value.name for node in model.graph for value in node.outputs}
    tensors = {
        value.name
        for body in model.graph.subgraphs()
        for value in (*body.inputs, *(out for node in body for out in node.outputs))
        if isinstance(value.type, ir.TensorType)
    }
    return [name for name in names if name in main or name in tensors]


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and the bodies of its nodes, recursively."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for body in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                yield from _graphs(body)


def _shape(
    shapes: Mapping[str, tuple[int, ...]], value: ir.Value | None, layer: Layer
) -> tuple[int, ...]:
    if value is None:
        return ()
    if value.const_value is not None:
        return tuple(value.const_value.shape.numpy())
    if value.name not in shapes:
        raise PassInputError(
            f"layer '{layer.name}': onnx cannot infer the shape of '{value.name}' and no "
            "calibration sample computed it: give calibration data that runs this layer, from "
            "which mpqc reads its shapes",
            field="calibration",
        )
    return shapes[value.name]


def describe(layer: Layer, shapes: Mapping[str, tuple[int, ...]]) -> LayerDesc:
    node = layer.node
    weight = layer.weight_array()
    out_shape = _shape(shapes, layer.output, layer)
    in_shape = (
        _shape(shapes, node.inputs[0], layer)
        if layer.activation_index is not None
        else _shape(shapes, node.inputs[1], layer)
    )
    out_elems, in_elems = math.prod(out_shape), math.prod(in_shape)
    bias = (
        constant_array(node.inputs[2])
        if len(node.inputs) > 2 and node.op_type in ("Conv", "ConvTranspose", "Gemm")
        else None
    )
    bias_params = int(bias.size) if bias is not None else 0
    op = node.op_type
    kernel = stride = None
    groups, c_in, c_out = 1, None, None
    steps = step_weights = recurrent_macs = 0
    if op == "Conv":
        groups = node.attributes.get_int("group", 1)
        c_out, c_in = weight.shape[0], weight.shape[1] * groups
        kernel = tuple(weight.shape[2:])
        stride = tuple(node.attributes.get_ints("strides", [1] * len(kernel)))
        macs = out_elems * weight.shape[1] * math.prod(kernel)
    elif op == "ConvTranspose":
        groups = node.attributes.get_int("group", 1)
        c_in, c_out = weight.shape[0], weight.shape[1] * groups
        kernel = tuple(weight.shape[2:])
        stride = tuple(node.attributes.get_ints("strides", [1] * len(kernel)))
        macs = in_elems * weight.shape[1] * math.prod(kernel)
    elif op in ("Gemm", "MatMul"):
        k_axis = 1 if (op == "Gemm" and node.attributes.get_int("transB", 0)) else -2
        k = weight.shape[k_axis]
        c_in, c_out = k, weight.shape[layer.channel_axis]
        macs = out_elems * k
    elif op in ("LSTM", "GRU"):
        recurrence = constant_array(node.inputs[2])
        time_major = not node.attributes.get_int("layout", 0)
        sequence, batch = (
            (in_shape[:2] if time_major else in_shape[1::-1]) if len(in_shape) >= 2 else (1, 1)
        )
        recurrent = recurrence.size if recurrence is not None else 0
        macs = sequence * batch * (weight.size + recurrent)
        c_in, c_out = weight.shape[-1], weight.shape[1]
        steps = sequence * weight.shape[0]  # per direction
        step_weights = recurrent // weight.shape[0]
        recurrent_macs = sequence * batch * recurrent
    else:  # Gather: a table lookup moves rows, it multiplies nothing
        macs = 0
        c_out = weight.shape[0]
    return LayerDesc(
        name=layer.name,
        op_type=op,
        macs=int(macs),
        # An RNN's recurrence weight is stored and dequantized with its input weight (ir/layers.py).
        weight_params=int(
            weight.size
            + sum(constant_array(node.inputs[i]).size for i in layer.other_weight_indices)
        ),
        input_elems=int(in_elems),
        output_elems=int(out_elems),
        bias_params=bias_params,
        kernel=kernel,
        stride=stride,
        groups=int(groups),
        depthwise=op == "Conv" and groups > 1 and groups == c_in,
        c_in=None if c_in is None else int(c_in),
        c_out=None if c_out is None else int(c_out),
        steps=int(steps),
        step_weights=int(step_weights),
        recurrent_macs=int(recurrent_macs),
    )


def trip_count(layer: Layer, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, str | None]:
    """How many times one inference runs ``layer``, and the host whose count is unknown (then the
    count holds for the known hosts only, and the caller says so).

    A body runs once per If (whichever branch runs: each is priced as if it did), ``M`` times per
    Loop with a constant trip count ``M`` (the most it runs: its condition may stop it sooner) and
    once per step of a Scan's first scanned input with a static length."""
    count, unknown = 1, None
    for host, _ in layer.scope:
        steps = _host_trips(host, shapes)
        if steps is None:
            unknown = unknown or f"{host.op_type} '{node_name(host)}'"
        else:
            count *= steps
    return count, unknown


def _host_trips(host: ir.Node, shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    if host.op_type == "If":
        return 1
    if host.op_type == "Loop":
        limit = constant_array(host.inputs[0]) if host.inputs else None
        return int(limit.reshape(-1)[0]) if limit is not None and limit.size == 1 else None
    if host.op_type == "Scan":
        scanned = host.attributes.get_int("num_scan_inputs", 0)
        if scanned < 1:
            return None
        first = host.inputs[len(host.inputs) - scanned]
        axes = host.attributes.get_ints("scan_input_axes", [0] * scanned)
        shape = shapes.get(first.name) if first is not None else None
        if shape is None and first is not None and first.const_value is not None:
            shape = tuple(first.const_value.shape.numpy())
        return int(shape[axes[0]]) if shape else None
    return None
