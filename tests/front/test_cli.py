"""The ``mpqc`` command: one clear line and exit 1 on bad input, nothing written; same run, same
bytes."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from models import random_inputs, run_ort, small_cnn

from mpqc import cli


def _mpqc(capsys: pytest.CaptureFixture[str], *argv: str | os.PathLike) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_user_error(code: int, err: str, fragment: str) -> None:
    assert code == 1
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mpqc: ") and "internal error" not in lines[0], lines[0]
    assert fragment in lines[0]
    assert "Traceback" not in err


# --- bad inputs ---------------------------------------------------------------------------------


@pytest.fixture
def out_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def _nothing_written(folder: pathlib.Path) -> None:
    assert list(folder.iterdir()) == []


def test_a_file_that_is_not_onnx(capsys, tmp_path, out_dir) -> None:
    bad = tmp_path / "notes.onnx"
    bad.write_text("definitely not protobuf")
    code, _, err = _mpqc(
        capsys, bad, "--hw", "generic", "-o", out_dir / "q.onnx", "--uniform", "w8a8"
    )
    _assert_user_error(code, err, "is not a readable ONNX model")
    _nothing_written(out_dir)


def test_a_truncated_model(capsys, cnn_path, tmp_path, out_dir) -> None:
    half = tmp_path / "half.onnx"
    data = cnn_path.read_bytes()
    half.write_bytes(data[: len(data) // 2])
    code, _, err = _mpqc(
        capsys, half, "--hw", "generic", "-o", out_dir / "q.onnx", "--uniform", "w8a8"
    )
    _assert_user_error(code, err, "is not a readable ONNX model")
    _nothing_written(out_dir)


def test_a_missing_model(capsys, tmp_path, out_dir) -> None:
    code, _, err = _mpqc(
        capsys,
        tmp_path / "nope.onnx",
        "--hw",
        "generic",
        "-o",
        out_dir / "q.onnx",
        "--uniform",
        "w8a8",
    )
    _assert_user_error(code, err, "does not exist")
    _nothing_written(out_dir)


def test_an_output_that_is_a_directory(capsys, cnn_path, out_dir) -> None:
    code, _, err = _mpqc(capsys, cnn_path, "--hw", "generic", "-o", out_dir, "--uniform", "w8a8")
    _assert_user_error(code, err, "is a directory")
    _nothing_written(out_dir)


def test_an_unwritable_output(capsys, cnn_path, out_dir, monkeypatch) -> None:
    out_dir.chmod(0o555)
    try:
        if os.access(out_dir, os.W_OK):
            # Running as root, which ignores permissions: make the folder look read-only as it would
            # to anyone else.
            real_access = os.access
            monkeypatch.setattr(
                "mpqc.ir.io.os.access",
                lambda path, mode: (
                    False
                    if pathlib.Path(path) == out_dir and mode & os.W_OK
                    else real_access(path, mode)
                ),
            )
        code, _, err = _mpqc(
            capsys, cnn_path, "--hw", "generic", "-o", out_dir / "q.onnx", "--uniform", "w8a8"
        )
        _assert_user_error(code, err, "permission denied")
        _nothing_written(out_dir)
    finally:
        out_dir.chmod(0o755)


def test_an_output_in_a_missing_folder(capsys, cnn_path, out_dir) -> None:
    code, _, err = _mpqc(
        capsys, cnn_path, "--hw", "generic", "-o", out_dir / "sub" / "q.onnx", "--uniform", "w8a8"
    )
    _assert_user_error(code, err, "does not exist")
    _nothing_written(out_dir)


def test_output_equal_to_input(capsys, cnn_path) -> None:
    before = cnn_path.read_bytes()
    code, _, err = _mpqc(capsys, cnn_path, "--hw", "generic", "-o", cnn_path, "--uniform", "w8a8")
    _assert_user_error(code, err, "is the input model: mpqc never overwrites its inputs")
    assert cnn_path.read_bytes() == before


@pytest.mark.parametrize(
    ("pipeline", "fragment"),
    [
        ("canonicalize,lower-qdk", "unknown pass 'lower-qdk': did you mean lower-qdq"),
        ("canonicalize{fold_batchnorm=perhaps}", "'perhaps' is not a boolean"),
        ("lower-qdq{uniform=w8a8", "expected '}'"),
    ],
)
def test_bad_pipelines(capsys, cnn_path, out_dir, pipeline, fragment) -> None:
    code, _, err = _mpqc(
        capsys,
        cnn_path,
        "--hw",
        "generic",
        "-o",
        out_dir / "q.onnx",
        "--pipeline",
        pipeline,
    )
    _assert_user_error(code, err, fragment)
    _nothing_written(out_dir)


def _nan_image() -> np.ndarray:
    sample = np.zeros((1, 3, 8, 8), np.float32)
    sample[0, 1, 2, 3] = np.nan
    return sample


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"pixels": np.zeros((1, 3, 8, 8), np.float32)}, "do not match the model's ['image']"),
        ({"image": _nan_image()}, "contains NaN or Inf"),
        ({"image": np.zeros((1, 3, 9, 8), np.float32)}, "the model wants [N,3,8,8]"),
        ({"image": np.zeros((1, 3, 8, 8))}, "input 'image' is float64, the model wants float32"),
    ],
    ids=["wrong-name", "nan", "wrong-shape", "wrong-dtype"],
)
def test_bad_calibration_data(capsys, cnn_path, tmp_path, out_dir, arrays, fragment) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    np.savez(calib / "s0.npz", **arrays)
    code, _, err = _mpqc(
        capsys,
        cnn_path,
        "--hw",
        "generic",
        "-o",
        out_dir / "q.onnx",
        "--uniform",
        "w8a8",
        "--calib",
        calib,
    )
    _assert_user_error(code, err, fragment)
    _nothing_written(out_dir)


def test_calibration_file_that_is_not_numpy(capsys, cnn_path, tmp_path, out_dir) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "s0.npz").write_bytes(b"PK\x03\x04 not a zip")
    code, _, err = _mpqc(
        capsys,
        cnn_path,
        "--hw",
        "generic",
        "-o",
        out_dir / "q.onnx",
        "--uniform",
        "w8a8",
        "--calib",
        calib,
    )
    _assert_user_error(code, err, "is not a readable numpy file")
    _nothing_written(out_dir)


def test_npy_calibration_for_a_single_input_model(capsys, cnn_path, cnn_samples, tmp_path) -> None:
    calib = tmp_path / "npy"
    calib.mkdir()
    for i, sample in enumerate(cnn_samples):
        np.save(calib / f"s{i}.npy", sample["image"])
    code, out, err = _mpqc(
        capsys,
        cnn_path,
        "--hw",
        "generic",
        "-o",
        tmp_path / "q.onnx",
        "--uniform",
        "w8a8",
        "--calib",
        calib,
    )
    assert code == 0, err
    assert "on 2 held-out samples" in out


def test_too_few_samples_are_not_called_held_out(capsys, cnn_path, cnn_samples, tmp_path) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, sample in enumerate(cnn_samples[:3]):
        np.savez(calib / f"s{i}.npz", **sample)
    code, out, err = _mpqc(
        capsys, cnn_path, "--hw", "generic", "-o", tmp_path / "q.onnx", "--calib", calib
    )
    assert code == 0, err
    assert "on 3 calibration samples" in out and "held-out" not in out
    assert "none were held out" in out


def test_an_unknown_hardware_spec(capsys, cnn_path, out_dir) -> None:
    code, _, err = _mpqc(
        capsys, cnn_path, "--hw", "tpu-v9000", "-o", out_dir / "q.onnx", "--uniform", "w8a8"
    )
    _assert_user_error(code, err, "tpu-v9000")
    _nothing_written(out_dir)


def test_a_bad_uniform_choice(capsys, cnn_path, out_dir) -> None:
    code, _, err = _mpqc(
        capsys, cnn_path, "--hw", "generic", "-o", out_dir / "q.onnx", "--uniform", "w9x"
    )
    _assert_user_error(code, err, "'w9x' is not a bit choice like w8a8")
    _nothing_written(out_dir)


def test_a_report_path_in_a_missing_folder(capsys, cnn_path, calib_dir, out_dir) -> None:
    code, _, err = _mpqc(
        capsys,
        cnn_path,
        "--hw",
        "generic",
        "-o",
        out_dir / "q.onnx",
        "--calib",
        calib_dir,
        "--uniform",
        "w8a8",
        "--report-json",
        out_dir / "no" / "r.json",
    )
    _assert_user_error(code, err, "folder")
    _nothing_written(out_dir)


def test_an_ir_dump_dir_that_is_a_file(capsys, cnn_path, calib_dir, out_dir, tmp_path) -> None:
    a_file = tmp_path / "dumps"
    a_file.write_text("")
    code, _, err = _mpqc(
        capsys,
        cnn_path,
        "--hw",
        "generic",
        "-o",
        out_dir / "q.onnx",
        "--calib",
        calib_dir,
        "--uniform",
        "w8a8",
        "--ir-dump-dir",
        a_file,
    )
    _assert_user_error(code, err, "is a file")
    _nothing_written(out_dir)


@pytest.mark.parametrize(
    ("make", "fragment"), [("missing", "does not exist"), ("empty", "has no .npz or .npy files")]
)
def test_calibration_directories_without_samples(
    capsys, cnn_path, tmp_path, out_dir, make, fragment
) -> None:
    calib = tmp_path / "calib"
    if make == "empty":
        calib.mkdir()
    code, _, err = _mpqc(
        capsys,
        cnn_path,
        "--hw",
        "generic",
        "-o",
        out_dir / "q.onnx",
        "--uniform",
        "w8a8",
        "--calib",
        calib,
    )
    _assert_user_error(code, err, fragment)
    _nothing_written(out_dir)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--hw", "generic"], "the following arguments are required: -o/--output"),
        (
            ["--hw", "generic", "-o", "q.onnx", "--wbits", "1,2"],
            "bit-widths must be between 2 and 16",
        ),
        (["--hw", "generic", "-o", "q.onnx", "--shape", "N"], "'N' is not DIM=SIZE"),
        (
            ["--hw", "generic", "-o", "q.onnx", "--no-such-flag"],
            "unrecognized arguments: --no-such-flag",
        ),
    ],
)
def test_a_bad_command_line_is_a_one_line_user_error(capsys, cnn_path, argv, fragment) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([str(cnn_path), *argv])
    assert info.value.code == 1  # argparse's 2 would read as "infeasible constraints"
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("mpqc: ") and fragment in err


def test_print_ir_after_an_unknown_pass(capsys, cnn_path, out_dir) -> None:
    code, _, err = _mpqc(
        capsys,
        cnn_path,
        "--hw",
        "generic",
        "-o",
        out_dir / "q.onnx",
        "--uniform",
        "w8a8",
        "--print-ir-after",
        "lower-qdk",
    )
    _assert_user_error(code, err, "unknown pass 'lower-qdk': did you mean lower-qdq")
    _nothing_written(out_dir)


def test_print_ir_after_one_pass(capsys, cnn_path, calib_dir, tmp_path) -> None:
    code, _, err = _mpqc(
        capsys,
        cnn_path,
        "--hw",
        "generic",
        "-o",
        tmp_path / "q.onnx",
        "--calib",
        calib_dir,
        "--uniform",
        "w8a8",
        "--print-ir-after",
        "calibrate",
        "-q",
    )
    assert code == 0
    assert err.startswith("// -----// IR Dump After calibrate //----- //\n// mpqc IR")
    assert err.count("IR Dump After") == 1 and "mpqc.calib.range" in err


def test_verbose_shows_the_traceback(capsys, tmp_path, out_dir) -> None:
    code, _, err = _mpqc(
        capsys,
        tmp_path / "nope.onnx",
        "--hw",
        "generic",
        "-o",
        out_dir / "q.onnx",
        "--uniform",
        "w8a8",
        "-v",
    )
    assert code == 1
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1].startswith("mpqc: ")


def test_the_installed_command_reports_one_line(tmp_path: pathlib.Path) -> None:
    command = shutil.which("mpqc", path=str(pathlib.Path(sys.executable).parent))
    assert command is not None, "the mpqc console script is not installed"
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    out = tmp_path / "q.onnx"
    run = subprocess.run(
        [command, str(bad), "--hw", "generic", "-o", str(out), "--uniform", "w8a8"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    assert run.stderr.splitlines() == [run.stderr.strip()] and run.stderr.startswith("mpqc: ")
    assert "Traceback" not in run.stderr and not out.exists()


# --- success ------------------------------------------------------------------------------------


def _compile(
    capsys, cnn_path, calib_dir, folder: pathlib.Path, *extra: str
) -> tuple[int, str, str]:
    folder.mkdir(exist_ok=True)
    return _mpqc(
        capsys,
        cnn_path,
        "--hw",
        "generic",
        "-o",
        folder / "q.onnx",
        "--calib",
        calib_dir,
        "--uniform",
        "w8a8",
        "--report-json",
        folder / "report.json",
        "--ir-dump-dir",
        folder / "dumps",
        *extra,
    )


def test_compile_writes_a_model_that_runs(capsys, cnn_path, calib_dir, tmp_path) -> None:
    code, out, err = _compile(capsys, cnn_path, calib_dir, tmp_path / "run")
    assert code == 0, err
    model = tmp_path / "run" / "q.onnx"
    feeds = random_inputs(small_cnn(), 1)[0]
    quantized, reference = run_ort(str(model), feeds)[0], run_ort(small_cnn(), feeds)[0]
    assert np.abs(quantized - reference).max() < 0.05 * np.abs(reference).max()
    assert "4 quantized: 4x w8a8" in out
    assert "output SQNR" in out

    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["bits"] == {name: {"a": 8, "w": 8} for name in ("c1", "c2", "c3", "logits")}
    assert report["report"]["verify"]["checker"] == "ok"
    assert report["bytes"]["output"] == model.stat().st_size < report["bytes"]["input"]
    assert report["pipeline"].startswith("canonicalize,calibrate,lower-qdq{uniform=w8a8}")

    dumps = sorted(p.name for p in (tmp_path / "run" / "dumps").iterdir())
    assert dumps == [
        "001_canonicalize.txt",
        "002_calibrate.txt",
        "003_lower-qdq.txt",
        "004_verify.txt",
    ]
    assert (
        (tmp_path / "run" / "dumps" / "003_lower-qdq.txt")
        .read_text()
        .startswith("// -----// IR Dump After lower-qdq //----- //\n")
    )


def test_two_runs_give_the_same_bytes(capsys, cnn_path, calib_dir, tmp_path) -> None:
    for run in ("a", "b"):
        code, _, err = _compile(capsys, cnn_path, calib_dir, tmp_path / run, "--seed", "7")
        assert code == 0, err
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "q.onnx").read_bytes() == (b / "q.onnx").read_bytes()
    for dump in (a / "dumps").iterdir():
        assert dump.read_bytes() == (b / "dumps" / dump.name).read_bytes()
    report_a = json.loads((a / "report.json").read_text())
    report_b = json.loads((b / "report.json").read_text())
    report_a.pop("output"), report_b.pop("output")
    assert report_a == report_b


def test_a_model_with_external_data(capsys, calib_dir, tmp_path, monkeypatch) -> None:
    import onnx
    import onnx_ir as ir

    folder = tmp_path / "exported"
    folder.mkdir()
    onnx.save(
        ir.to_proto(small_cnn()),
        folder / "m.onnx",
        save_as_external_data=True,
        location="m.onnx.data",
        size_threshold=0,
    )
    monkeypatch.chdir(tmp_path)
    code, _, err = _mpqc(
        capsys,
        "exported/m.onnx",
        "--hw",
        "generic",
        "-o",
        "q.onnx",
        "--calib",
        calib_dir,
        "--uniform",
        "w4a8",
        "-q",
    )
    assert code == 0, err
    feeds = random_inputs(small_cnn(), 1)[0]
    assert (
        np.abs(run_ort("q.onnx", feeds)[0] - run_ort(small_cnn(), feeds)[0]).max()
        < 0.3 * np.abs(run_ort(small_cnn(), feeds)[0]).max()
    )


def test_a_failing_verify_writes_nothing(capsys, cnn_path, calib_dir, out_dir) -> None:
    pipeline = "canonicalize,calibrate,lower-qdq{uniform=w2a8},verify{min_sqnr_db=40}"
    code, _, err = _mpqc(
        capsys,
        cnn_path,
        "--hw",
        "generic",
        "-o",
        out_dir / "q.onnx",
        "--calib",
        calib_dir,
        "--pipeline",
        pipeline,
    )
    _assert_user_error(code, err, "is below the required 40.0 dB")
    _nothing_written(out_dir)


def test_the_embedded_example(capsys, tmp_path) -> None:
    pytest.importorskip("mpqc.examples")
    code, out, err = _mpqc(
        capsys, "--hw", "generic", "-o", tmp_path / "digits.onnx", "--uniform", "w8a8"
    )
    assert code == 0, err
    assert out.startswith("mpqc: embedded digits CNN -> ")
    assert "accuracy" in out and (tmp_path / "digits.onnx").exists()


def test_a_model_without_layers_stays_float_and_says_so(capsys, tmp_path) -> None:
    import onnx_ir as ir
    from models import with_if

    ir.save(with_if(), tmp_path / "if.onnx")
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(6):
        np.savez(
            calib / f"s{i}.npz", cond=np.array(i % 2 == 0), x=np.array([1.0, -2.0], np.float32) * i
        )
    code, out, err = _mpqc(
        capsys,
        tmp_path / "if.onnx",
        "--hw",
        "generic",
        "-o",
        tmp_path / "q.onnx",
        "--calib",
        calib,
        "--uniform",
        "w8a8",
    )
    assert code == 0, err
    assert "output SQNR inf dB" in out and "no layer has bits to lower" in out


def test_quiet_prints_nothing(capsys, cnn_path, calib_dir, tmp_path) -> None:
    code, out, err = _mpqc(
        capsys,
        cnn_path,
        "--hw",
        "generic",
        "-o",
        tmp_path / "q.onnx",
        "--calib",
        calib_dir,
        "--uniform",
        "w4a8",
        "-q",
    )
    assert code == 0 and out == "" and err == ""


def test_a_search_run_is_quiet_too(capsys, cnn_path, calib_dir, tmp_path) -> None:
    code, out, err = _mpqc(
        capsys,
        cnn_path,
        "--hw",
        "generic",
        "-o",
        tmp_path / "q.onnx",
        "--calib",
        calib_dir,
        "--max-size",
        "0.2x",
        "-q",
    )
    assert code == 0 and out == "" and err == ""


def test_the_summary_states_the_size_the_budget_counts(
    capsys, cnn_path, calib_dir, tmp_path
) -> None:
    code, out, _ = _mpqc(
        capsys,
        cnn_path,
        "--hw",
        "generic",
        "-o",
        tmp_path / "q.onnx",
        "--calib",
        calib_dir,
        "--max-size",
        "0.3x",
    )
    assert code == 0
    size_line = next(line for line in out.splitlines() if line.strip().startswith("size"))
    match = re.search(
        r"tensors [0-9.]+ MB -> [0-9.]+ MB \(([0-9.]+)x, what --max-size counts\)", size_line
    )
    assert match is not None and float(match.group(1)) <= 0.3


def test_an_infeasible_budget_exits_with_2(capsys, cnn_path, calib_dir, out_dir) -> None:
    code, _, err = _mpqc(
        capsys,
        cnn_path,
        "--hw",
        "generic",
        "-o",
        out_dir / "q.onnx",
        "--calib",
        calib_dir,
        "--max-size",
        "0.01x",
    )
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("mpqc: ") and "cheapest reachable" in err
    _nothing_written(out_dir)


def test_an_existing_output_is_replaced(capsys, cnn_path, calib_dir, tmp_path) -> None:
    target = tmp_path / "q.onnx"
    target.write_bytes(b"old")
    code, _, err = _mpqc(
        capsys,
        cnn_path,
        "--hw",
        "generic",
        "-o",
        target,
        "--calib",
        calib_dir,
        "--uniform",
        "w8a8",
        "-q",
    )
    assert code == 0, err
    assert target.read_bytes() != b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["cnn.onnx", "calib", "q.onnx"])


@pytest.mark.slow
def test_two_processes_with_different_hash_seeds_write_the_same_bytes(
    cnn_path, calib_dir, tmp_path
) -> None:
    command = shutil.which("mpqc", path=str(pathlib.Path(sys.executable).parent))
    assert command is not None
    for seed in ("1", "2"):
        folder = tmp_path / seed
        folder.mkdir()
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run(
            [
                command,
                str(cnn_path),
                "--hw",
                "generic",
                "-o",
                str(folder / "q.onnx"),
                "--calib",
                str(calib_dir),
                "--ir-dump-dir",
                str(folder / "dumps"),
                "-q",
            ],
            env=env,
            check=True,
            timeout=300,
        )
    assert (tmp_path / "1" / "q.onnx").read_bytes() == (tmp_path / "2" / "q.onnx").read_bytes()
    for dump in (tmp_path / "1" / "dumps").iterdir():
        assert dump.read_bytes() == (tmp_path / "2" / "dumps" / dump.name).read_bytes()


_TASKS = """
def fixed(model):
    return 0.25


def broken(model):
    raise RuntimeError("the test set is missing\\nsecond line")


def exits_0(model):
    raise SystemExit(0)


def exits_3(model):
    raise SystemExit(3)
"""


@pytest.fixture
def task_file(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "task.py"
    path.write_text(_TASKS)
    return path


def test_eval_names_the_task_metric_verify_reports(
    capsys, cnn_path, calib_dir, task_file, tmp_path
) -> None:
    report = tmp_path / "r.json"
    code, out, _ = _mpqc(
        capsys,
        cnn_path,
        "--hw",
        "generic",
        "-o",
        tmp_path / "q.onnx",
        "--calib",
        calib_dir,
        "--uniform",
        "w8a8",
        "--eval",
        f"{task_file}:fixed",
        "--report-json",
        report,
    )
    assert code == 0 and "accuracy    0.2500 (float 0.2500)" in out
    assert json.loads(report.read_text())["report"]["verify"]["task_metric"] == 0.25


def test_an_eval_that_raises_is_one_line_and_writes_nothing(
    capsys, cnn_path, calib_dir, task_file, out_dir
) -> None:
    code, _, err = _mpqc(
        capsys,
        cnn_path,
        "--hw",
        "generic",
        "-o",
        out_dir / "q.onnx",
        "--calib",
        calib_dir,
        "--uniform",
        "w8a8",
        "--eval",
        f"{task_file}:broken",
    )
    _assert_user_error(
        code,
        err,
        "verify: the evaluation function failed on the quantized model: "
        "RuntimeError: the test set is missing",
    )
    _nothing_written(out_dir)


@pytest.mark.parametrize("function", ["exits_0", "exits_3"])
def test_an_eval_that_calls_sys_exit_is_one_line_and_writes_nothing(
    capsys, cnn_path, calib_dir, task_file, out_dir, function
) -> None:
    # SystemExit is no Exception: it used to end mpqc with the metric's code (0: success, nothing
    # written).
    argv = ["--calib", calib_dir, "--uniform", "w8a8", "--eval", f"{task_file}:{function}"]
    code, _, err = _mpqc(capsys, cnn_path, "--hw", "generic", "-o", out_dir / "q.onnx", *argv)
    _assert_user_error(code, err, "verify: the evaluation function failed on the quantized model:")
    assert f"it called sys.exit({function[-1]})" in err
    _nothing_written(out_dir)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("{task}:absent", "has no function 'absent'"),
        ("no_such_module_anywhere:f", "cannot import 'no_such_module_anywhere'"),
        ("just_a_name", "is not MODULE:FUNCTION"),
    ],
    ids=["no-function", "no-module", "no-colon"],
)
def test_an_eval_that_does_not_resolve_is_a_usage_error(capsys, task_file, spec, fragment) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--hw", "generic", "-o", "q.onnx", "--eval", spec.format(task=task_file)])
    err = capsys.readouterr().err
    assert info.value.code == 1 and len(err.splitlines()) == 1 and fragment in err
