"""Annotations: typed keys, canonical JSON, persistence through save/load and metadata_props."""

from __future__ import annotations

import json
import pathlib

import onnx
import pytest
from models import small_cnn

from mpqc import ir as mir
from mpqc.ir import annotations as A


def test_annotations_round_trip_through_save_and_load(tmp_path: pathlib.Path) -> None:
    model = small_cnn()
    conv = next(n for n in model.graph if n.op_type == "Conv")
    image = model.graph.inputs[0]
    A.BITS.set(conv, {"w": 4, "a": 8})
    A.CALIB_RANGE.set(
        image, {"min": -1.25, "max": 2.5, "lo": -1.25, "hi": 2.5, "method": "minmax", "samples": 3}
    )
    A.sensitivity_key("entropy").set(conv, {"w4a8": 0.125, "w8a8": 1 / 3})
    A.REPORT.set_section(model, "lower-qdq", {"lowered_layers": 1})

    path = mir.save(model, tmp_path / "annotated.onnx")
    proto = onnx.load(path)
    node_props = {p.key: p.value for p in proto.graph.node[0].metadata_props}
    assert json.loads(node_props["mpqc.bits"]) == {"w": 4, "a": 8}
    assert {p.key for p in proto.metadata_props} == {"mpqc.report"}

    reloaded = mir.load(path)
    conv2 = next(n for n in reloaded.graph if n.op_type == "Conv")
    assert A.BITS.get(conv2) == {"w": 4, "a": 8}
    assert A.CALIB_RANGE.get(reloaded.graph.inputs[0])["hi"] == 2.5
    assert A.sensitivity_key("entropy").get(conv2) == {"w4a8": 0.125, "w8a8": 0.333333}
    assert A.REPORT.get(reloaded) == {"lower-qdq": {"lowered_layers": 1}}
    assert A.present_keys(reloaded) == {
        "mpqc.bits",
        "mpqc.calib.range",
        "mpqc.sens.entropy",
        "mpqc.report",
    }


def test_canonical_json_is_sorted_rounded_and_handles_non_finite() -> None:
    import numpy as np

    text = A.canonical_json(
        {
            "b": [np.float32(0.1), float("inf")],
            "a": 1 / 3,
            "c": np.int64(3),
            "d": np.array([[0.5, 1 / 7]], np.float32),
        }
    )
    assert text == '{"a":0.333333,"b":[0.1,"inf"],"c":3,"d":[[0.5,0.142857]]}'


def test_transient_keys_live_in_meta_and_are_not_saved(tmp_path: pathlib.Path) -> None:
    key = A.AnnotationKey("mpqc.test.cache", "node", persistent=False)
    model = small_cnn()
    node = next(iter(model.graph))
    key.set(node, [1, 2, 3])
    assert (
        key.has(node)
        and key.get(node) == [1, 2, 3]
        and "mpqc.test.cache" not in node.metadata_props
    )
    reloaded = mir.load(mir.save(model, tmp_path / "m.onnx"))
    assert not key.has(next(iter(reloaded.graph)))
    key.remove(node)
    assert not key.has(node)


def test_a_key_cannot_be_declared_twice_differently() -> None:
    A.AnnotationKey("mpqc.test.twice", "node")
    A.AnnotationKey("mpqc.test.twice", "node")  # the same declaration again is fine
    with pytest.raises(ValueError, match="declared twice"):
        A.AnnotationKey("mpqc.test.twice", "model")


def test_drop_removes_named_keys_everywhere() -> None:
    model = small_cnn()
    for node in model.graph:
        A.BITS.set(node, {"w": 8, "a": 8})
        A.sensitivity_key("weight-error").set(node, {"w8a8": 0.1})
    removed = A.drop(model, {"mpqc.sens.weight-error"})
    assert removed == len(list(model.graph))
    assert A.present_keys(model) == {"mpqc.bits"}


def test_values_are_decoded_by_their_key_type() -> None:
    model = small_cnn()
    conv = next(n for n in model.graph if n.op_type == "Conv")
    A.sensitivity_key("entropy").set(conv, {"w4": float("inf"), "w8": 0.5})
    assert A.sensitivity_key("entropy").get(conv) == {"w4": float("inf"), "w8": 0.5}
    conv.metadata_props["mpqc.bits"] = '{"w": "4", "a": 8}'  # edited by hand
    with pytest.raises(
        A.AnnotationError, match=r"mpqc\.bits on node '\w+': mpqc\.bits\['w'\] is '4', not int"
    ):
        A.BITS.get(conv)
    conv.metadata_props["mpqc.bits"] = '{"w": 4}'
    with pytest.raises(mir.ModelError, match=r"mpqc\.bits\S* has no 'a'"):
        A.BITS.get(conv)


def test_families_make_keys_of_their_type() -> None:
    key = A.SENSITIVITY.key("entropy")
    assert key is A.sensitivity_key("entropy") and key.value_type == dict[str, float]
    assert A.SENSITIVITY.matches("mpqc.sens.output") and not A.SENSITIVITY.matches("mpqc.bits")
    assert A.ALL.matches("mpqc.bits") and str(A.SENSITIVITY) == "mpqc.sens.*"
