"""``--executor`` on a cluster of machines that share nothing (front/cluster.py).

The workers here are processes with their own temporary folder and working directory: what they
need travels through Dask (scattered once, by content), never through this machine's disk. A
worker killed mid-run costs only a rerun of its tasks, and a scheduler that stops answering ends
the compilation with one line, exit 1, nothing written.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import cloudpickle
import numpy as np
import pytest
from models import random_inputs, small_cnn, small_cnn_on_disk

from mpqc import cli, cluster
from mpqc.passes import CalibrationData, CompileContext, PassManager, build_pipeline
from mpqc.passes.lib.evaluator import Evaluator

distributed = pytest.importorskip("distributed")

_SEARCH = (
    "canonicalize,calibrate,sensitivity-output,cost,search{strategy=nsga2,generations=2},"
    "lower-qdq,verify"
)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    return small_cnn_on_disk(tmp_path_factory.mktemp("cnn"))


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory):
    """Two worker processes whose TMPDIR and working directory are their own."""
    home = tmp_path_factory.mktemp("workers")
    preload = home / "chdir.py"
    preload.write_text(f"import os\nos.chdir({str(home)!r})\n")
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address=None,
        env={"TMPDIR": str(home / "tmp"), "OMP_NUM_THREADS": "1"},
        preload=[str(preload)],
    ) as local_cluster:
        (home / "tmp").mkdir(exist_ok=True)
        yield local_cluster, home


def test_workers_with_their_own_disk_compute_the_same_model(
    cnn, elsewhere, tmp_path, monkeypatch
) -> None:
    model, calib = cnn
    local_cluster, home = elsewhere
    common = [str(model), "--hw", "x86_avx2", "--calib", str(calib), "--max-size", "0.4x", "-q"]
    common += ["--pipeline", _SEARCH]
    assert cli.main([*common, "-o", str(tmp_path / "local.onnx")]) == 0
    # this machine's temporary folder stays empty: no evaluator folder is written for workers
    mine = tmp_path / "mine"
    mine.mkdir()
    monkeypatch.setenv("TMPDIR", str(mine))
    monkeypatch.setattr("tempfile.tempdir", None)
    with distributed.Client(local_cluster.scheduler_address) as client:
        assert set(client.run(os.getcwd).values()) == {str(home)}
        assert set(client.run(lambda: os.environ["TMPDIR"]).values()) == {str(home / "tmp")}
    code = cli.main(
        [
            *common,
            "-o",
            str(tmp_path / "cluster.onnx"),
            "--executor",
            local_cluster.scheduler_address,
        ]
    )
    assert code == 0
    assert (tmp_path / "local.onnx").read_bytes() == (tmp_path / "cluster.onnx").read_bytes()
    assert not any(mine.iterdir())


def _mse(reference, outputs) -> float:
    return float(
        np.mean([np.mean((r[0] - o[0]) ** 2) for r, o in zip(reference, outputs, strict=True)])
    )


def _dies_once(marker: str):
    """``_mse``, but the first worker to run it dies."""

    def measure(reference, outputs) -> float:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return _mse(reference, outputs)
        os.close(fd)
        os._exit(1)

    return measure


def test_a_worker_killed_mid_run_only_reruns_its_tasks(elsewhere, tmp_path) -> None:
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    model = small_cnn()
    samples = random_inputs(model, 4)
    PassManager(
        build_pipeline(
            "canonicalize,calibrate", CompileContext(calibration=CalibrationData(tuple(samples)))
        )
    )(model)
    configs = [{"c1": (4, 8), "c3": (8, 8)}, {"c2": (4, 8), "c1": (8, 8)}, {"c3": (2, 8)}]
    expected = Evaluator(model, samples, wbits=(2, 4, 8)).errors(configs, _mse)
    marker = str(tmp_path / "died")
    address = elsewhere[0].scheduler_address
    with distributed.Client(address) as client:
        executor = cluster.ClusterExecutor(client, address)
        evaluator = Evaluator(model, samples, wbits=(2, 4, 8), executor=executor)
        assert evaluator.errors(configs, _dies_once(marker)) == pytest.approx(expected)
        assert os.path.exists(marker)  # a worker did die
        executor.shutdown()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow  # a scheduler and a worker of their own, as subprocesses
def test_a_scheduler_that_stops_answering_is_one_line_and_nothing_written(
    cnn, tmp_path, capsys, monkeypatch
) -> None:
    model, calib = cnn
    address = f"tcp://127.0.0.1:{_free_port()}"
    scheduler = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            address.rsplit(":", 1)[1],
            "--dashboard-address",
            ":0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_worker",
            address,
            "--nthreads",
            "1",
            "--no-nanny",
            "--no-dashboard",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with distributed.Client(address, timeout="60s") as client:
            client.wait_for_workers(1, timeout=60)
        monkeypatch.setattr(cluster, "POLL", 0.5)
        monkeypatch.setattr(cluster, "TIMEOUT", 0.5)
        wait = cluster._Watched.result

        def stop_the_scheduler_then_wait(self, timeout=None):
            os.kill(scheduler.pid, signal.SIGSTOP)
            return wait(self, timeout)

        monkeypatch.setattr(cluster._Watched, "result", stop_the_scheduler_then_wait)
        out = tmp_path / "q.onnx"
        start = time.monotonic()
        code = cli.main(
            [
                str(model),
                "--hw",
                "x86_avx2",
                "--calib",
                str(calib),
                "--max-size",
                "0.4x",
                "--pipeline",
                _SEARCH,
                "-o",
                str(out),
                "--executor",
                address,
            ]
        )
        err = capsys.readouterr().err
        assert code == 1 and len(err.splitlines()) == 1, err
        assert f"the Dask scheduler at {address} stopped answering during the work" in err
        assert not out.exists() and time.monotonic() - start < 60
    finally:
        os.kill(scheduler.pid, signal.SIGCONT)
        for process in (worker, scheduler):
            process.kill()
            process.wait()


def _slow_sum(values: np.ndarray) -> float:
    time.sleep(0.5)
    return float(values.sum())


def test_a_task_whose_scattered_input_was_lost_is_shipped_again(elsewhere) -> None:
    """Data scattered from a client cannot be recomputed: when the workers holding it are gone,
    the scheduler cancels the tasks that read it, and the executor sends them again."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    local_cluster, _ = elsewhere
    values = np.arange(cluster.SHARED_BYTES, dtype=np.float64)  # big enough to be scattered
    with distributed.Client(local_cluster.scheduler_address) as client:
        executor = cluster.ClusterExecutor(client, local_cluster.scheduler_address)
        future = executor.submit(_slow_sum, values)
        (shared,) = executor._shared.values()
        client.cancel([shared], force=True)  # as if every worker holding it had died
        assert future.result() == float(values.sum())
        executor.shutdown()


def test_a_wait_that_times_out_leaves_the_task_to_finish(elsewhere) -> None:
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    local_cluster, _ = elsewhere
    values = np.arange(4, dtype=np.float64)
    with distributed.Client(local_cluster.scheduler_address) as client:
        executor = cluster.ClusterExecutor(client, local_cluster.scheduler_address)
        future = executor.submit(_slow_sum, values)
        with pytest.raises(TimeoutError):
            future.result(timeout=0.01)
        assert future.result() == 6.0
        executor.shutdown()
