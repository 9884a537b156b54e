"""``--emit-pareto`` lowers the whole front; ``--executor`` moves exact evaluations to a Dask
cluster without changing the answer."""

from __future__ import annotations

import json
import pathlib

import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from models import small_cnn_on_disk

from mpqc.cli import main


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    return small_cnn_on_disk(tmp_path_factory.mktemp("front"))


def test_every_front_point_is_lowered_and_runs(model_and_data, tmp_path) -> None:
    model, calib = model_and_data
    report = tmp_path / "r.json"
    code = main(
        [
            str(model),
            "--hw",
            "x86_avx2",
            "--calib",
            str(calib),
            "-o",
            str(tmp_path / "out.onnx"),
            "-q",
            # a budget that needs sub-8-bit layers (then slower ones): a front of several points
            "--max-size",
            "0.2x",
            "--max-latency",
            "1s",
            "--emit-pareto",
            str(tmp_path / "front"),
            "--report-json",
            str(report),
        ]
    )
    assert code == 0
    written = json.loads(report.read_text())
    files = sorted((tmp_path / "front").glob("*.onnx"))
    assert len(files) == len(written["pareto"]["points"]) == len(written["emitted"]) >= 2
    sizes = set()
    for file, point in zip(files, written["pareto"]["points"], strict=True):
        proto = onnx.load(file)
        onnx.checker.check_model(proto, full_check=True)
        ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        tensors = sum(
            ir.from_proto(proto).graph.initializers[name].const_value.nbytes
            for name in ir.from_proto(proto).graph.initializers
        )
        assert tensors <= point["objectives"]["size"]  # the priced size bounds what was written
        sizes.add(tensors)
    assert len(sizes) >= 2


def test_emit_pareto_without_a_search_is_a_user_error(model_and_data, tmp_path, capsys) -> None:
    model, calib = model_and_data
    code = main(
        [
            str(model),
            "--hw",
            "x86_avx2",
            "--calib",
            str(calib),
            "-o",
            str(tmp_path / "o.onnx"),
            "--uniform",
            "w8a8",
            "--emit-pareto",
            str(tmp_path / "front"),
        ]
    )
    assert code == 1
    assert "needs a search" in capsys.readouterr().err


def test_a_dask_cluster_gives_the_same_model(model_and_data, tmp_path) -> None:
    distributed = pytest.importorskip("distributed")
    model, calib = model_and_data
    common = [
        str(model),
        "--hw",
        "x86_avx2",
        "--calib",
        str(calib),
        "--max-size",
        "0.4x",
        "-q",
        "--pipeline",
        "canonicalize,calibrate,sensitivity-output,cost,search{strategy=nsga2,generations=2},lower-qdq,verify",
    ]
    assert main([*common, "-o", str(tmp_path / "local.onnx")]) == 0
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        assert (
            main(
                [
                    *common,
                    "-o",
                    str(tmp_path / "cluster.onnx"),
                    "--executor",
                    cluster.scheduler_address,
                ]
            )
            == 0
        )
    assert (tmp_path / "local.onnx").read_bytes() == (tmp_path / "cluster.onnx").read_bytes()
