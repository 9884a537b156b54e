"""Plan files name the layers inside If/Loop/Scan bodies by their scoped names (``c/then/ct0``),
mpqc's YAML and onnxruntime's overrides JSON alike, and an unknown name is one line naming the
closest layers the model has."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import onnx_ir as ir
import pytest
from models import control_flow, random_inputs

import mpqc
from mpqc.core import Bits
from mpqc.core.bits import FLOAT_BITS
from mpqc.passes.choose.plan import read_plan
from mpqc.passes.choose.plan_file import PlanError

FLOAT = Bits(FLOAT_BITS, FLOAT_BITS)


def _overrides(folder: pathlib.Path, document: dict) -> pathlib.Path:
    path = folder / "overrides.json"
    path.write_text(json.dumps(document))
    return path


def test_overrides_quantize_the_body_layers_they_name(tmp_path: pathlib.Path) -> None:
    """A body layer named by its weight's override or its scoped name follows the file; one the
    file does not name stays float, as in onnxruntime's quantizer, which does not enter bodies."""
    path = _overrides(
        tmp_path,
        {
            "TensorQuantOverrides": {"wt": [{"quant_type": "QInt4"}]},
            "customized_weight_config": {"h/body/m": {"bits": 4, "group_size": 32}},
        },
    )
    layout, bits = read_plan(path, control_flow())
    assert layout.weight_only
    assert bits["c/then/ct0"] == FLOAT  # weight-only layout: static layers stay float
    assert bits["h/body/m"] == Bits(4, FLOAT_BITS)
    path = _overrides(
        tmp_path,
        {
            "TensorQuantOverrides": {
                "wt": [{"quant_type": "QInt4"}],
                "a": [{"quant_type": "QUInt16"}],
            },
            "nodes_to_exclude": ["c/else/ce"],
        },
    )
    _, bits = read_plan(path, control_flow())
    assert bits["c/then/ct0"] == Bits(4, 8)
    assert bits["last/body/y"] == Bits(8, 16)  # named by its input, a Scan body's value
    assert bits["c/else/ce"] == FLOAT and bits["h/body/m"] == FLOAT


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        # a body's node named without its scope
        ({"nodes_to_exclude": ["ct0"]}, "unknown layer 'ct0' (did you mean 'c/then/ct0'?)"),
        ({"nodes_to_exclude": ["c/then/ct1"]}, "did you mean 'c/then/ct0'"),
        ({"TensorQuantOverrides": {"wl2": [{}]}}, "unknown tensor 'wl2' (did you mean 'wl'"),
        ({"nodes_to_exclude": ["zzzzzz"]}, "unknown layer 'zzzzzz' (the model has no such layer)"),
    ],
)
def test_an_unknown_name_in_overrides_is_one_line_with_the_near_names(
    tmp_path: pathlib.Path, document: dict, expected: str
) -> None:
    with pytest.raises(PlanError) as error:
        read_plan(_overrides(tmp_path, document), control_flow())
    message = str(error.value)
    assert expected in message and "\n" not in message, message


def test_an_unknown_name_in_a_yaml_plan_names_the_scoped_layer(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text('layers:\n  "m": {bits: w8a8}\n')
    with pytest.raises(PlanError, match=r"unknown layer 'm' \(did you mean 'h/body/m'\?\)"):
        read_plan(path, control_flow())


def test_a_body_layer_the_overrides_name_is_lowered_at_their_bits(tmp_path: pathlib.Path) -> None:
    proto = ir.to_proto(control_flow())
    samples = random_inputs(proto, 10, seed=1)
    for index, sample in enumerate(samples):
        sample["go"] = np.array(index % 2 == 0)
    path = _overrides(tmp_path, {"TensorQuantOverrides": {"wt": [{"quant_type": "QInt4"}]}})
    result = mpqc.compile(proto, mpqc.CompileOptions(plan=str(path), calibration=samples))
    (host,) = [node for node in result.model.graph.node if node.op_type == "If"]
    then = next(a.g for a in host.attribute if a.name == "then_branch")
    assert "DequantizeLinear" in {node.op_type for node in then.node}
    chosen = {row.layer: row.chosen for row in result.explanation.rows}
    assert chosen["c/then/ct0"] == "w4a8" and chosen["c/else/ce"] == "float"
