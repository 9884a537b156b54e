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
with its sessions, for later tasks. Workers on other machines cannot read this machine's folder: an
executor that ships to them pickles inside ``by_value()``, where the evaluator pickles as one
content-addressed payload of bytes (its state, graph, stored tensors, samples and float outputs)
that the executor sends once per worker (``front/cluster.py``); a worker revives it once per
payload, its stored tensors written to a folder of its own.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import contextvars
import hashlib
import multiprocessing
import os
import pathlib
import pickle
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import onnx

from mpqc.passes.lib.evaluator.store import DATA_FILE, WeightStore

__all__ = ["Shipped", "by_value", "in_worker"]

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

#: Per process: evaluators revived from pickles, by their folder or payload, the latest
#: ``_KEPT`` (a long-lived cluster worker sees one evaluator per analysis).
_WORKER_CACHE: collections.OrderedDict[str, Any] = collections.OrderedDict()
_KEPT = 4

#: Set while an executor pickles tasks for workers that do not share this machine's disk.
_BY_VALUE: contextvars.ContextVar[bool] = contextvars.ContextVar("mpqc_by_value", default=False)


@contextlib.contextmanager
def by_value() -> Iterator[None]:
    """Evaluators pickled in this block travel as bytes, not as a folder on this machine."""
    token = _BY_VALUE.set(True)
    try:
        yield
    finally:
        _BY_VALUE.reset(token)


def _remember(key: str, evaluator: Any) -> Any:
    _WORKER_CACHE[key] = evaluator
    while len(_WORKER_CACHE) > _KEPT:
        _WORKER_CACHE.popitem(last=False)
    return evaluator


def _idle_cores() -> int:
    """Cores this process may use that other processes are not already keeping busy (1-minute
    load)."""
    return len(os.sched_getaffinity(0)) - int(os.getloadavg()[0])


class Shipped:
    """The evaluator's side that travels: its executor, its files and its pickled form.

    The class using it holds ``executor``, ``samples``, ``reference`` (timed in
    ``_reference_seconds``), ``_proto()`` and ``_store`` (its folder)."""

    executor: concurrent.futures.Executor | None
    samples: list[dict[str, np.ndarray]]
    reference: list[list[np.ndarray]]
    _reference_seconds: float
    _store: WeightStore
    _parsed: onnx.ModelProto | None
    #: (content key, bytes) of the by-value payload, made once.
    _payload: tuple[str, bytes] | None = None

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
        return os.path.join(self._store.folder, name)

    def _write_files(self) -> None:
        """Put the graph, the samples and the float outputs on disk once (its big tensors already
        are), so that pickling stays cheap."""
        if os.path.exists(self._path("model.onnx")):
            return
        reference = self.reference
        np.savez(
            self._path("samples.npz"),
            **{f"{i}/{k}": v for i, s in enumerate(self.samples) for k, v in s.items()},
        )
        np.savez(
            self._path("reference.npz"),
            **{f"{i}/{k}": v for i, outputs in enumerate(reference) for k, v in enumerate(outputs)},
        )
        # last: its presence says the files are complete
        pathlib.Path(self._path("model.onnx")).write_bytes(self._proto().SerializeToString())

    def _by_value(self) -> tuple[str, bytes]:
        """The payload ``by_value`` ships: state, graph, stored tensors, samples and float outputs,
        pickled once and named by its SHA-256."""
        if self._payload is None:
            graph = self._proto().SerializeToString()
            stored = self._store._folder  # the big tensors the graph refers to, if any
            data = pathlib.Path(stored, DATA_FILE).read_bytes() if stored else b""
            reference = self.reference
            state = {**self.__dict__, **_TRANSIENT, "_store": WeightStore(), "_payload": None}
            parts = (type(self), state, graph, data, self.samples, reference)
            blob = pickle.dumps(parts, protocol=pickle.HIGHEST_PROTOCOL)
            self._payload = (hashlib.sha256(blob).hexdigest(), blob)
        return self._payload

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        """Pickled as its file-backed description, or inside ``by_value`` as its payload; either
        way unpickled once per process (``_revive``, ``_revive_by_value``)."""
        if _BY_VALUE.get():
            return _revive_by_value, self._by_value()
        self._write_files()
        state = {**self.__dict__, **_TRANSIENT}
        return _revive, (type(self), state)


def _revive(cls: type, state: dict[str, Any]) -> Any:
    """The evaluator described by ``state``, read from its files the first time this process sees
    it and reused after, so a worker opens each session once however many tasks it runs."""
    folder = state["_store"].folder
    if folder not in _WORKER_CACHE:
        evaluator = cls.__new__(cls)
        evaluator.__dict__.update(state)
        evaluator.samples = _load_indexed(evaluator._path("samples.npz"))
        evaluator._reference = [
            [outputs[k] for k in sorted(outputs, key=int)]
            for outputs in _load_indexed(evaluator._path("reference.npz"))
        ]
        _remember(folder, evaluator)
    # The clip ranges are feeds, not files: they travel with every task (``set_ranges``).
    _WORKER_CACHE[folder]._sites = state["_sites"]
    return _WORKER_CACHE[folder]


def _revive_by_value(key: str, payload: bytes) -> Any:
    """The evaluator a payload describes, unpickled the first time this process sees it."""
    if key not in _WORKER_CACHE:
        cls, state, graph, data, samples, reference = pickle.loads(payload)
        evaluator = cls.__new__(cls)
        evaluator.__dict__.update(state)
        if data:  # this worker's own copy of the big tensors
            pathlib.Path(evaluator._path(DATA_FILE)).write_bytes(data)
        evaluator._parsed = onnx.ModelProto.FromString(graph)
        evaluator.samples, evaluator._reference = samples, reference
        _remember(key, evaluator)
    return _WORKER_CACHE[key]


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
