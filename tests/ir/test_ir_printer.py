"""The IR printer: deterministic, topological, tensors summarized, subgraphs nested."""

from __future__ import annotations

import hashlib
import pathlib
import re

import numpy as np
import onnx_ir as ir
from models import small_cnn, with_if

from mpqc import ir as mir
from mpqc.ir import annotations as A


def test_two_loads_of_one_file_print_the_same_bytes(cnn_path: pathlib.Path) -> None:
    first = mir.dump(mir.load(cnn_path))
    second = mir.dump(mir.load(cnn_path))
    assert first.encode() == second.encode()
    assert first.startswith("// mpqc IR  ir_version=10  opsets={ai.onnx:17}\n")


def test_order_is_topological_whatever_the_insertion_order() -> None:
    model = small_cnn()
    expected = mir.dump(model)
    nodes = list(model.graph)
    for node in nodes:
        model.graph.remove(node)
    model.graph.extend(reversed(nodes))  # consumers before producers
    assert [n.op_type for n in model.graph][0] == "Gemm"
    assert mir.dump(model) == expected
    ops = [
        line.split("=")[1].split("(")[0].strip()
        for line in expected.splitlines()
        if " = " in line and "init" not in line and "return" not in line
    ]
    assert ops == [
        "Conv",
        "Relu",
        "Conv",
        "Relu",
        "Conv",
        "Add",
        "Relu",
        "GlobalAveragePool",
        "Flatten",
        "Gemm",
    ]


def test_tensors_are_summarized_with_a_sha1() -> None:
    model = small_cnn()
    text = mir.dump(model)
    w1 = model.graph.initializers["w1"].const_value
    digest = hashlib.sha1(w1.tobytes()).hexdigest()[:12]
    assert f"%w1 = init float[8,3,3,3] sha1:{digest}" in text
    assert len(text) < 4000  # no tensor contents


def test_scalars_and_floats_use_the_fixed_format() -> None:
    model = small_cnn()
    model.graph.register_initializer(
        ir.Value(name="eps", const_value=ir.tensor(np.array(1 / 3, np.float32), name="eps"))
    )
    node = next(n for n in model.graph if n.op_type == "Conv")
    A.BITS.set(node, {"w": 4, "a": 8})
    A.sensitivity_key("entropy").set(node, {"w4a8": 2 / 3})
    text = mir.dump(model)
    assert re.search(r"%eps = init float\[\] sha1:[0-9a-f]{12} = 0\.333333\n", text)
    assert '{mpqc.bits={"a":8,"w":4}, mpqc.sens.entropy={"w4a8":0.666667}}' in text


def test_subgraphs_are_printed_nested() -> None:
    text = mir.dump(with_if())
    lines = text.splitlines()
    if_line = next(i for i, line in enumerate(lines) if "= If(" in line)
    assert lines[if_line + 1].startswith("    ^else_branch else_g() {")
    assert "      %e: float[2] = Neg(%x)" in lines
    assert "      %t: float[2] = Relu(%x)" in lines
    assert lines[-1] == "}"


def test_same_model_built_twice_prints_identically() -> None:
    assert mir.dump(small_cnn(seed=3)) == mir.dump(small_cnn(seed=3))
    assert mir.dump(small_cnn(seed=3)) != mir.dump(small_cnn(seed=4))


_TINY = """
<ir_version: 10, opset_import: ["" : 17]>
tiny (float[1,2,3,3] x) => (float[1,2,3,3] y) {
  c = Conv <pads=[1,1,1,1], dilations=[1,1]> (x, w)
  y = LeakyRelu <alpha=0.1> (c)
}
"""

_TINY_DUMP = """\
// mpqc IR  ir_version=10  opsets={ai.onnx:17}
graph tiny(%x: float[1,2,3,3]) {
  %w = init float[2,2,3,3] sha1:74feb0ae9df8
  %c: ? = Conv(%x, %w) <dilations=[1,1], pads=[1,1,1,1]> {mpqc.bits={"a":8,"w":4}}
  %y: float[1,2,3,3] = LeakyRelu(%c) <alpha=0.1>
  return %y
}
"""


def test_the_dump_format() -> None:
    from models import build

    model = ir.from_proto(
        build(_TINY, {}, 0, {"w": np.arange(36, dtype=np.float32).reshape(2, 2, 3, 3) / 8})
    )
    A.BITS.set(next(iter(model.graph)), {"w": 4, "a": 8})
    assert mir.dump(model) == _TINY_DUMP
