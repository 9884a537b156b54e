"""The plan file: search -> plan -> lower from the plan writes the same model; an edited plan is
lowered as edited; a plan that cannot be lowered is one line; the onnxruntime export runs in
``quantize_static`` and keeps the chosen precisions."""

from __future__ import annotations

import hashlib
import json
import pathlib

import numpy as np
import onnx
import pytest

import mpqc
from mpqc import cli, examples
from mpqc.passes import CompileContext
from mpqc.passes.choose.plan_ort import quantize_static_arguments


def _mpqc(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _graph_digest(path: pathlib.Path) -> str:
    """The model without its model-level metadata (the search's front, costs and report)."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    return hashlib.sha256(model.SerializeToString()).hexdigest()


def _bits(path: pathlib.Path) -> dict[str, str]:
    lines = pathlib.Path(path).read_text().splitlines()
    return {
        line.split('"')[1]: line.split("bits: ")[1].split(",")[0].rstrip("}")
        for line in lines
        if line.startswith('  "')
    }


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A mixed-precision search of the digits CNN with its plan."""
    folder = tmp_path_factory.mktemp("plan")
    code = cli.main(
        [
            "--hw",
            "x86_avx2",
            "-o",
            str(folder / "searched.onnx"),
            "--max-size",
            "0.2x",
            "--max-latency",
            "1s",
            "-q",
        ]
        + ["--plan-out", str(folder / "plan.yaml")]
    )
    assert code == 0
    return folder


def test_lowering_the_written_plan_writes_the_searched_model(
    searched: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = searched / "plan.yaml"
    assert {"w4a8", "w8a8"} <= set(_bits(plan).values())  # a mixed plan, one line per layer
    again = searched / "again.yaml"
    code, _, err = _mpqc(
        capsys, "--hw", "x86_avx2", "-o", searched / "planned.onnx", "--plan", plan, "-q",
        "--plan-out", again,
    )  # fmt: skip
    assert code == 0, err
    assert _graph_digest(searched / "planned.onnx") == _graph_digest(searched / "searched.onnx")
    assert again.read_text() == plan.read_text()


def test_an_edited_plan_is_lowered_as_edited(
    searched: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (searched / "plan.yaml").read_text()
    edited = searched / "edited.yaml"
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith('  "'))
    name = lines[first].split('"')[1]
    lines[first] = f'  "{name}": {{bits: w8a16}}'
    lines[-1] = lines[-1].split(":")[0] + ": float"
    edited.write_text("\n".join(lines) + "\n")
    out = searched / "edited.onnx"
    code, _, err = _mpqc(
        capsys, "--hw", "x86_avx2", "-o", out, "--plan", edited, "-q", "--plan-out",
        searched / "edited-out.yaml",
    )  # fmt: skip
    assert code == 0, err
    written = _bits(searched / "edited-out.yaml")
    assert written[name] == "w8a16"
    assert list(written.values())[-1] == "float"
    inputs = {i.name for i in onnx.load(str(out)).graph.node if i.op_type == "QuantizeLinear"}
    assert inputs


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda t: t + '  "no.such.layer": {bits: w8a8}\n', "unknown layer 'no.such.layer'"),
        (lambda t: "\n".join(t.splitlines()[:-1]) + "\n", "no line for layer"),
        (lambda t: t.replace("bits: w8a8", "bits: w3a8", 1), "x86_avx2 does not run"),
        (lambda t: t.replace("bits: w8a8", "bits: eight", 1), "is not a bit choice"),
        (lambda t: "layers: [1, 2]\n", "not an mpqc plan"),
    ],
)
def test_a_plan_that_cannot_be_lowered_is_one_line_and_writes_nothing(
    searched: pathlib.Path, capsys: pytest.CaptureFixture[str], edit: object, fragment: str
) -> None:
    bad = searched / "bad.yaml"
    bad.write_text(edit((searched / "plan.yaml").read_text()))  # type: ignore[operator]
    out = searched / "bad.onnx"
    code, _, err = _mpqc(capsys, "--hw", "x86_avx2", "-o", out, "--plan", bad)
    assert code == 1
    assert len(err.splitlines()) == 1 and fragment in err and "bad.yaml" in err, err
    assert not out.exists()


def test_plan_refuses_a_search_option(
    searched: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _mpqc(
        capsys, "--hw", "x86_avx2", "-o", searched / "x.onnx", "--plan",
        searched / "plan.yaml", "--max-size", "0.5x",
    )  # fmt: skip
    assert code == 1 and "budgets cannot apply" in err


def test_onnxruntime_overrides_keep_the_chosen_precisions(
    searched: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """8- and 16-bit activations from an mpqc plan, reproduced by onnxruntime's quantizer."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    # (static ranges: quantize_static's overrides cannot state a dynamic one)
    text = (searched / "plan.yaml").read_text().replace("w4a8", "w8a8").replace("w8adyn", "w8a8")
    lines = text.splitlines()
    wide = next(i for i, line in enumerate(lines) if line.startswith('  "'))
    wide_name = lines[wide].split('"')[1]
    lines[wide] = f'  "{wide_name}": {{bits: w8a16}}'
    (searched / "wide.yaml").write_text("\n".join(lines) + "\n")
    overrides = searched / "overrides.json"
    code, _, err = _mpqc(
        capsys, "--hw", "x86_avx2", "-o", searched / "wide.onnx", "--plan",
        searched / "wide.yaml", "--plan-out", overrides, "-q",
    )  # fmt: skip
    assert code == 0, err
    document = json.loads(overrides.read_text())
    types = {
        name: items[0]["quant_type"] for name, items in document["TensorQuantOverrides"].items()
    }
    assert "QUInt16" in types.values() and "QInt8" in types.values()

    samples = [s for s in examples.digits_calibration()][:8]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(samples)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    # onnxruntime quantizes the model mpqc lowered: canonicalized (its BatchNorm folded)
    canonical = searched / "canonical.onnx"
    float_model = onnx.load(str(examples.digits_model_path()))
    onnx.save(mpqc.Pipeline("canonicalize", CompileContext()).run(float_model), str(canonical))
    quantized = searched / "ort.onnx"
    quantize_static(
        str(canonical),
        str(quantized),
        Reader(),
        quant_format=QuantFormat.QDQ,
        **quantize_static_arguments(overrides),
    )
    model = onnx.load(str(quantized))
    produced = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            zero_point = next(t for t in model.graph.initializer if t.name == node.input[2])
            produced[node.input[0]] = zero_point.data_type
    initializers = {t.name: t.data_type for t in model.graph.initializer}
    for name, quant_type in types.items():
        expected = {
            "QUInt16": onnx.TensorProto.UINT16,
            "QUInt8": onnx.TensorProto.UINT8,
            "QInt8": onnx.TensorProto.INT8,
        }[quant_type]
        if name in produced:  # an activation's quantizer
            assert produced[name] == expected, name
        else:  # a weight: stored quantized under onnxruntime's name for it
            stored = [t for n, t in initializers.items() if n.startswith(name)]
            assert expected in stored, (name, stored)

    # and read back, the overrides give the plan they came from
    code, _, err = _mpqc(
        capsys, "--hw", "x86_avx2", "-o", searched / "from-ort.onnx", "--plan", overrides,
        "--plan-out", searched / "from-ort.yaml", "-q",
    )  # fmt: skip
    assert code == 0, err
    assert _bits(searched / "from-ort.yaml") == _bits(searched / "wide.yaml")


def test_mpqc_opt_lowers_a_plan_with_the_plan_pass(
    searched: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``plan{file=...}`` stands where the search would in a hand-written pipeline."""
    from mpqc.tools import opt

    calibration = searched / "calib"
    calibration.mkdir(exist_ok=True)
    for index, sample in enumerate(examples.digits_calibration()):
        np.savez(calibration / f"{index:03d}.npz", **sample)
    out = searched / "opt.onnx"
    pipeline = (
        f"canonicalize,calibrate,plan{{file={searched / 'plan.yaml'}}},recover,lower-qdq,verify"
    )
    code = opt.main(
        [str(examples.digits_model_path()), "--hw", "x86_avx2", "--calib", str(calibration)]
        + ["-p", pipeline, "-o", str(out)]
    )
    assert code == 0, capsys.readouterr().err
    assert _graph_digest(out) == _graph_digest(searched / "searched.onnx")


def test_matmul_nbits_layers_export_as_customized_weight_config(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = tmp_path / "weight-only.json"
    code, _, err = _mpqc(
        capsys, "--hw", "x86_avx2", "-o", tmp_path / "w.onnx", "--weight-only", "-q",
        "--plan-out", overrides,
    )  # fmt: skip
    assert code == 0, err
    document = json.loads(overrides.read_text())
    assert document["customized_weight_config"] == {"head.fc": {"bits": 4, "group_size": 32}}
    # onnxruntime's static quantizer has no float-activation conv: those layers are excluded
    assert "stem.conv" in document["nodes_to_exclude"]
    yaml_plan = tmp_path / "from-json.yaml"
    code, _, err = _mpqc(
        capsys, "--hw", "x86_avx2", "-o", tmp_path / "j.onnx", "--plan", overrides, "-q",
        "--plan-out", yaml_plan,
    )  # fmt: skip
    assert code == 0, err
    assert "weight_only: true" in yaml_plan.read_text()
    assert _bits(yaml_plan)["head.fc"] == "w4a32"


def test_a_clipped_range_is_written_and_a_run_calibrated_otherwise_says_so(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The plan line names the estimator of a range it did not take from minmax; lowering the
    plan after calibrating with another estimator is a note, with the same one none."""
    plan = tmp_path / "plan.yaml"
    argv = ["--hw", "x86_avx2", "--uniform", "w8a8", "-o", tmp_path / "q.onnx"]
    assert _mpqc(capsys, *argv, "--calib-method", "percentile", "--plan-out", plan)[0] == 0
    lines = [line for line in plan.read_text().splitlines() if line.startswith('  "')]
    assert lines and all("activation: uint8 static (percentile range)" in line for line in lines)
    code, out, _ = _mpqc(capsys, "--hw", "x86_avx2", "-o", tmp_path / "q2.onnx", "--plan", plan)
    assert code == 0
    assert f"{len(lines)} layer(s) read input ranges from other estimators than the plan's " in out
    assert f"({len(lines)} from percentile in the plan, minmax here)" in out
    replay = ["--calib-method", "percentile", "--plan", plan]
    code, out, _ = _mpqc(capsys, "--hw", "x86_avx2", "-o", tmp_path / "q3.onnx", *replay)
    assert code == 0 and "other estimators" not in out
