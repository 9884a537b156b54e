"""What a new user ran into (issue 13 item 6): float activations named as such, sizes that count
external data, one note per compilation with --emit-pareto, an onnxruntime reader given straight to
CompileContext, a spec to copy, mpqc-opt's analysis pipeline on every bundled spec."""

from __future__ import annotations

import pathlib
import shutil

import numpy as np
import onnx
import pytest
import yaml

import mpqc
from mpqc import cli, examples, hwspecs
from mpqc.ir import annotations
from mpqc.passes import CompileContext
from mpqc.tools import hw, opt


def _digits(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "digits.onnx"
    shutil.copy(examples.digits_model_path(), path)
    return path


def test_without_data_the_summary_and_the_bits_say_activations_stay_float(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "q.onnx"
    assert (
        cli.main([str(_digits(tmp_path)), "--hw", "x86_avx2", "-o", str(out), "--uniform", "w8a8"])
        == 0
    )
    printed = capsys.readouterr().out
    layers = next(line for line in printed.splitlines() if line.startswith("  layers"))
    assert layers.endswith("6 quantized: 6x w8 (activations float)"), layers
    model = mpqc.ir.load(str(out))
    bits = [annotations.BITS.get(node) for node in model.graph if annotations.BITS.has(node)]
    assert len(bits) == 6 and all(b == {"w": 8, "a": 32} for b in bits)


def test_the_size_line_counts_external_data(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = onnx.load(str(examples.digits_model_path()))
    path = tmp_path / "external.onnx"
    onnx.save(
        model, str(path), save_as_external_data=True, location="external.data", size_threshold=0
    )
    total = path.stat().st_size + (tmp_path / "external.data").stat().st_size
    assert path.stat().st_size < total / 4  # the weights are in the .data file
    assert mpqc.ir.file_bytes(path) == total
    code = cli.main(
        [str(path), "--hw", "x86_avx2", "-o", str(tmp_path / "q.onnx"), "--uniform", "w8a8"]
    )
    assert code == 0
    assert f"size        {total / 1e6:.3f} MB ->" in capsys.readouterr().out


def test_emit_pareto_notes_once(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        ["--hw", "x86_avx2", "-o", str(tmp_path / "q.onnx"), "--max-size", "0.2x"]
        + ["--max-latency", "1s", "--emit-pareto", str(tmp_path / "front")]
    )
    assert code == 0
    notes = [
        line for line in capsys.readouterr().out.splitlines() if "note        recover:" in line
    ]
    assert len(notes) == 1
    assert len(list((tmp_path / "front").glob("*.onnx"))) > 1


def test_compile_context_takes_an_onnxruntime_reader() -> None:
    from onnxruntime.quantization import CalibrationDataReader

    samples = list(examples.digits_calibration())[:16]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(samples)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    context = CompileContext(calibration=Reader())
    assert len(context.calibration) == 16
    quantized = mpqc.Pipeline("canonicalize,calibrate,lower-qdq{uniform=w8a8}", context).run(
        onnx.load(str(examples.digits_model_path()))
    )
    assert any(node.op_type == "QuantizeLinear" for node in quantized.graph.node)


@pytest.mark.parametrize("name", hwspecs.names())
def test_hw_show_yaml_is_a_spec_to_copy(
    name: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert hw.main(["show", name, "--yaml"]) == 0
    text = capsys.readouterr().out
    document = yaml.safe_load(text)
    assert document.get("name", name) == name  # an inheriting spec is named by its file
    copy = tmp_path / "mine.yaml"
    copy.write_text(text.replace(f"name: {name}", "name: mine", 1))
    assert hw.main(["validate", str(copy)]) == 0
    mine, bundled = hwspecs.load(str(copy)), hwspecs.load(name)
    assert mine.name == "mine" and mine.supported_pairs() == bundled.supported_pairs()


@pytest.mark.parametrize("name", hwspecs.names())
def test_mpqc_opt_analysis_pipeline_with_default_options(
    name: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The cost pass prices the bits the sensitivity pass scored on every spec (no 'no score for
    w16')."""
    calibration = tmp_path / "calib"
    calibration.mkdir()
    for index, sample in enumerate(list(examples.digits_calibration())[:20]):
        np.savez(calibration / f"{index:03d}.npz", **sample)
    code = opt.main(
        [str(examples.digits_model_path()), "--hw", name, "--calib", str(calibration)]
        + ["-p", "canonicalize,calibrate,sensitivity-output,cost,search"]
        + ["-o", str(tmp_path / "analysed.onnx")]
    )
    assert code == 0, capsys.readouterr().err
