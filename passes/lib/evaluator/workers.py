"""Running the evaluator's work in other processes: executors, and pickling as files.

``Evaluator.errors`` spreads its work — groups of layers, whole-graph configurations — over
``executor`` (any ``concurrent.futures.Executor``, e.g. a Dask client's). Without one it forks
local worker processes (one per idle core, one onnxruntime thread each, so the numbers are those of
a serial run) when the serial work is estimated above ``LOCAL_WORKERS_PAY_AFTER_S`` and at least two
cores are idle by the load average, else runs here. Workers only pay where cores are free, hence
the load test; intra-op threads never won under contention (bench/RESULTS.md) and would not keep the
one-thread numbers.

Sessions do not pickle, so the evaluator pickles as its file-backed description (graph, samples and
float outputs written once to a temporary folder); a worker process reads it once and keeps it,
with its sessions, for later tasks.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import pathlib
import shutil
import sys
import tempfile
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

__all__ = ["Shipped", "in_worker"]

#: Local workers are forked: "spawn" and "forkserver" re-import the caller's main module in every
#: worker, which re-runs any script that lacks an ``if __name__ == "__main__":`` guard.
_CAN_FORK = sys.platform.startswith("linux")

#: Serial seconds of work above which ``errors`` starts local worker processes when given no
#: executor: a spawned worker takes seconds to import onnxruntime and open its session.
LOCAL_WORKERS_PAY_AFTER_S = 10.0

#: What is not pickled: rebuilt from the files, or per process.
_TRANSIENT = {
    "_session": None,
    "samples": None,
    "executor": None,
    "_reference": None,
    "_parsed": None,
    "_float": None,
    "_slices": {},
}

#: Per process: evaluators revived from pickles, by their folder.
_WORKER_CACHE: dict[str, Any] = {}


def _idle_cores() -> int:
    """Cores this process may use that other processes are not already keeping busy (1-minute
    load)."""
    return len(os.sched_getaffinity(0)) - int(os.getloadavg()[0])


class Shipped:
    """The evaluator's side that travels: its executor, its files and its pickled form.

    The class using it holds ``executor``, ``samples``, ``reference`` (timed in
    ``_reference_seconds``), ``_proto()`` and ``_folder``."""

    executor: concurrent.futures.Executor | None
    samples: list[dict[str, np.ndarray]]
    reference: list[list[np.ndarray]]
    _reference_seconds: float
    _folder: str | None

    def _proto(self) -> Any:
        raise NotImplementedError

    @contextlib.contextmanager
    def _executor(self, jobs: int, configs: int) -> Iterator[concurrent.futures.Executor | None]:
        """The user's executor; else local worker processes when the work pays for starting them;
        else None."""
        if self.executor is not None or jobs < 2 or not _CAN_FORK:
            yield self.executor
            return
        workers = min(jobs, _idle_cores())
        self.reference  # noqa: B018 - computed here, timed, and shipped to the workers
        if workers < 2 or configs * self._reference_seconds / 2 < LOCAL_WORKERS_PAY_AFTER_S:
            yield None
            return
        with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("fork")
        ) as pool:
            yield pool

    def _path(self, name: str) -> str:
        assert self._folder is not None, "the evaluator's files are written only for workers"
        return os.path.join(self._folder, name)

    def _write_files(self) -> None:
        """Put the graph, the samples and the float outputs on disk once, so that pickling stays
        cheap."""
        if self._folder is not None:
            return
        reference = self.reference
        folder = tempfile.mkdtemp(prefix="mpqc-evaluator-")
        weakref.finalize(self, shutil.rmtree, folder, True)
        pathlib.Path(folder, "model.onnx").write_bytes(self._proto().SerializeToString())
        np.savez(
            os.path.join(folder, "samples.npz"),
            **{f"{i}/{k}": v for i, s in enumerate(self.samples) for k, v in s.items()},
        )
        np.savez(
            os.path.join(folder, "reference.npz"),
            **{f"{i}/{k}": v for i, outputs in enumerate(reference) for k, v in enumerate(outputs)},
        )
        self._folder = folder

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[type, dict[str, Any]]]:
        """Pickled as its file-backed description; unpickled once per process (``_revive``)."""
        self._write_files()
        state = {**self.__dict__, **_TRANSIENT}
        return _revive, (type(self), state)


def _revive(cls: type, state: dict[str, Any]) -> Any:
    """The evaluator described by ``state``, read from its files the first time this process sees
    it and reused after, so a worker opens each session once however many tasks it runs."""
    folder = state["_folder"]
    if folder not in _WORKER_CACHE:
        evaluator = cls.__new__(cls)
        evaluator.__dict__.update(state)
        evaluator.samples = _load_indexed(evaluator._path("samples.npz"))
        evaluator._reference = [
            [outputs[k] for k in sorted(outputs, key=int)]
            for outputs in _load_indexed(evaluator._path("reference.npz"))
        ]
        _WORKER_CACHE[folder] = evaluator
    return _WORKER_CACHE[folder]


def _load_indexed(path: str) -> list[dict[str, np.ndarray]]:
    """An archive written as ``{index}/{key}`` entries, back as one dict per index."""
    with np.load(path) as archive:
        items: dict[int, dict[str, np.ndarray]] = {}
        for entry in archive.files:
            index, key = entry.split("/", 1)
            items.setdefault(int(index), {})[key] = archive[entry]
    return [items[i] for i in sorted(items)]


def in_worker(evaluator: Any, method: str, argument: Any, measure: Any) -> Any:
    """``evaluator.<method>(argument, measure)``, a task a worker process runs."""
    return getattr(evaluator, method)(argument, measure)
