"""mpqc.ir.outputs: outputs claimed before the work, written as one commit, no litter left."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import onnx_ir as ir
import pytest
from models import small_cnn

from mpqc import ir as mir
from mpqc.ir.outputs import OutputError, Outputs
from mpqc.ir.scratch import HOST, scratch_folder


def test_a_file_output_must_be_a_regular_file_in_a_writable_folder(tmp_path) -> None:
    outputs = Outputs()
    assert outputs.claim(tmp_path / "ok.onnx", "output") == tmp_path / "ok.onnx"
    with pytest.raises(OutputError, match="is a directory"):
        Outputs().claim(tmp_path, "output")
    with pytest.raises(OutputError, match="does not exist"):
        Outputs().claim(tmp_path / "missing" / "x.onnx", "output")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="is a FIFO, not a regular file") as info:
        Outputs().claim(fifo, "report_json")
    assert info.value.field == "report_json"
    with pytest.raises(OutputError, match="is a character device, not a regular file"):
        Outputs().claim("/dev/null", "output")


def test_names_as_long_as_the_file_system_allows_are_fine_and_longer_ones_refused(
    tmp_path,
) -> None:
    # The temporary name used to be '.' + the name + a suffix: a legal 255-byte name failed with
    # OSError after all the work.
    longest = tmp_path / ("m" * 250 + ".onnx")
    mir.save(small_cnn(), longest)
    assert mir.load(longest) is not None and sorted(os.listdir(tmp_path)) == [longest.name]
    with pytest.raises(OutputError, match="longer than this file system allows"):
        Outputs().claim(tmp_path / ("m" * 251 + ".onnx"), "output")


def test_no_output_may_be_an_input_or_another_output(tmp_path) -> None:
    model = tmp_path / "model.onnx"
    ir.save(small_cnn(), model)
    (tmp_path / "link.onnx").symlink_to(model)
    os.link(model, tmp_path / "hard.onnx")
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "s0.npz").write_bytes(b"sample")
    outputs = Outputs()
    outputs.protect(model, "the input model")
    outputs.protect(calib, "the calibration data")
    for alias in ("model.onnx", "link.onnx", "hard.onnx", "./sub/../model.onnx"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(OutputError, match="is the input model: mpqc never overwrites"):
            outputs.claim(tmp_path / alias, "output")
    with pytest.raises(OutputError, match="is the calibration data"):
        outputs.claim(calib / "s0.npz", "report_json")
    outputs.claim_model(tmp_path / "q.onnx", "output")
    with pytest.raises(OutputError, match="is also where output goes") as info:
        outputs.claim(tmp_path / "q.onnx", "report_json")
    assert str(info.value).startswith("report_json: ")
    with pytest.raises(OutputError, match="is also where output goes"):
        outputs.claim(tmp_path / "q.onnx.data", "report")  # the model's external data file
    with pytest.raises(OutputError, match="is a file: give a folder"):
        outputs.claim_folder(model, "emit_pareto")


def _two_files(tmp_path: pathlib.Path) -> tuple[Outputs, pathlib.Path, pathlib.Path]:
    outputs = Outputs()
    report = outputs.claim(tmp_path / "r.json", "report_json")
    return outputs, outputs.claim_model(tmp_path / "q.onnx", "output"), report


def test_a_failure_while_staging_writes_nothing_and_leaves_no_staging_folder(tmp_path) -> None:
    outputs, model, report = _two_files(tmp_path)
    (tmp_path / "q.onnx").write_bytes(b"the previous model")
    with pytest.raises(KeyboardInterrupt), outputs.commit() as staging:
        staging.model(small_cnn(), model)
        raise KeyboardInterrupt
    assert sorted(os.listdir(tmp_path)) == ["q.onnx"] and outputs.written == []
    assert model.read_bytes() == b"the previous model"


def test_files_go_in_place_in_order_and_a_failed_rename_says_what_was_written(
    tmp_path, monkeypatch
) -> None:
    outputs, model, report = _two_files(tmp_path)
    real_replace = os.replace

    def failing_second(src: str, dst: str) -> None:
        if outputs.written:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_second)
    with pytest.raises(OutputError) as info, outputs.commit() as staging:
        staging.model(small_cnn(), model)
        staging.text("{}", report)
    assert str(info.value) == (
        f"cannot write {report} (No space left on device); {model} written already"
    )
    assert sorted(os.listdir(tmp_path)) == ["q.onnx"]


def test_a_signal_during_the_renames_waits_until_all_files_are_in_place(
    tmp_path, monkeypatch
) -> None:
    outputs, model, report = _two_files(tmp_path)
    real_replace = os.replace

    def interrupted(src: str, dst: str) -> None:
        real_replace(src, dst)
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(os, "replace", interrupted)
    # the held signal goes to the handler found on entry: Python's own, whatever an earlier test
    # in this process left installed
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), outputs.commit() as staging:
            staging.model(small_cnn(), model)
            staging.text("{}", report)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert outputs.written == [model, report] and report.read_text() == "{}"
    assert sorted(os.listdir(tmp_path)) == ["q.onnx", "r.json"]


_SLOW_SAVE = """
import pathlib, sys, time
from mpqc.ir import io
from mpqc.tools import opt

real_write = io.write


def slow_write(model, path, data_name):
    real_write(model, path, data_name)
    pathlib.Path(sys.argv[1]).write_text("staged")
    time.sleep(120)


io.write = slow_write
sys.exit(opt.main(sys.argv[2:]))
"""


def _killed_while_saving(tmp_path: pathlib.Path, sig: int) -> subprocess.CompletedProcess:
    """Run mpqc-opt with a save that stalls once the model is staged, and send ``sig`` then."""
    model, out, flag = tmp_path / "in" / "m.onnx", tmp_path / "out" / "q.onnx", tmp_path / "flag"
    model.parent.mkdir(exist_ok=True)
    out.parent.mkdir(exist_ok=True)
    ir.save(small_cnn(), model)
    out.write_bytes(b"the previous model")
    argv = [sys.executable, "-c", _SLOW_SAVE, str(flag), str(model), "-p", "canonicalize"]
    process = subprocess.Popen(
        [*argv, "-o", str(out), "--report-json", str(out.parent / "r.json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not flag.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the save never started"
        time.sleep(0.05)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_sigterm_during_the_save_writes_nothing_and_cleans_up(tmp_path) -> None:
    done = _killed_while_saving(tmp_path, signal.SIGTERM)
    assert done.returncode == 128 + signal.SIGTERM
    assert done.stderr == "mpqc-opt: interrupted by SIGTERM; nothing was written\n"
    assert os.listdir(tmp_path / "out") == ["q.onnx"]
    assert (tmp_path / "out" / "q.onnx").read_bytes() == b"the previous model"


def test_sigkill_during_the_save_leaves_the_output_whole_and_the_next_run_cleans_up(
    tmp_path,
) -> None:
    done = _killed_while_saving(tmp_path, signal.SIGKILL)
    assert done.returncode == -signal.SIGKILL
    out = tmp_path / "out"
    assert (out / "q.onnx").read_bytes() == b"the previous model"
    (stale,) = (name for name in os.listdir(out) if name != "q.onnx")
    assert stale.startswith(".mpqc-")
    mir.save(small_cnn(), out / "other.onnx")
    assert sorted(os.listdir(out)) == ["other.onnx", "q.onnx"]


def test_a_folder_output_is_cleaned_of_stale_staging_too(tmp_path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    stale = tmp_path / f".mpqc-{HOST}-{int(dead.stdout)}-abcdefgh"
    stale.mkdir()
    (stale / "0").write_bytes(b"half a model")
    Outputs().claim_folder(tmp_path, "emit_pareto")
    assert os.listdir(tmp_path) == []


def test_staging_folders_of_live_processes_are_left_alone(tmp_path) -> None:
    live = tmp_path / f".mpqc-{HOST}-{os.getpid()}-abcdefgh"
    other_host = tmp_path / f".mpqc-00000000-{2**22 + 1}-abcdefgh"
    live.mkdir()
    other_host.mkdir()
    mir.save(small_cnn(), tmp_path / "m.onnx")
    assert live.exists() and other_host.exists()


def test_scratch_folders_of_killed_runs_are_removed_by_the_next(tmp_path, monkeypatch) -> None:
    """A SIGKILL skips finalizers: the next run sweeps this machine's dead runs' scratch."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    stale = tmp_path / f"mpqc-weights-{HOST}-{int(dead.stdout)}-abcdefgh"
    live = tmp_path / f"mpqc-evaluator-{HOST}-{os.getpid()}-abcdefgh"
    other_host = tmp_path / f"mpqc-weights-00000000-{int(dead.stdout)}-abcdefgh"
    for folder in (stale, live, other_host):
        folder.mkdir()
    (stale / "weights.data").write_bytes(b"gigabytes")
    made = scratch_folder("weights")
    assert not stale.exists() and live.exists() and other_host.exists()
    assert pathlib.Path(made).parent == tmp_path and os.path.isdir(made)
