"""``--executor``: a Dask cluster as the evaluations' executor, on machines that share nothing.

Reaching it. Dask's ``Client`` bounds only the TCP connect: a server that accepts and then never
answers holds it forever, and one that answers with something else than Dask's protocol can make it
read a garbage frame length and try to allocate exabytes. So the scheduler is first asked who it
is, over Dask's own comm layer, under one deadline for connect, request and reply; only a scheduler
that answers as one gets a ``Client``.

Shipping work (``ClusterExecutor``). The workers may be other machines, with their own disks and
temporary folders: every part of a task (the function, each argument) is pickled here with
evaluators by value (``evaluator/workers.py``'s ``by_value``), and a part of ``SHARED_BYTES`` or
more — an evaluator's graph, samples and float outputs — is scattered to every worker once, named
by its content, and unpickled once per worker, which keeps the result (and so its onnxruntime
sessions) for the tasks that follow. Small parts travel with their task.

Failures. A worker that dies mid-search loses only its running tasks: Dask reruns them on the
others. A shared part is broadcast, but Dask's memory manager may since have dropped the other
replicas, and data scattered from a client cannot be recomputed (dask/distributed#3149): the
scheduler then cancels the tasks that read it ("already forgotten"). Such a task is shipped again
(the part scattered anew) and resubmitted, up to ``RESUBMITS`` times. A scheduler that stops
answering would leave a result waited for forever, so a wait longer than ``POLL`` seconds asks the
scheduler who it is, under the same deadline as the first contact, and stops the compilation with
one line if it does not answer (nothing is written: the commit never happens).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import hashlib
import logging
import pickle
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from mpqc.core.errors import UsageError
from mpqc.passes.lib.evaluator.workers import by_value

__all__ = ["ClusterExecutor", "dask_executor"]

#: Seconds the scheduler has to accept the connection and say who it is.
TIMEOUT = 10.0
#: Seconds a result may be waited for before the scheduler is asked whether it still answers.
POLL = 30.0
#: Pickled task parts at least this big are scattered once instead of sent with every task.
SHARED_BYTES = 64 * 1024
#: Times a task cancelled by the scheduler (its scattered input was lost) is shipped again.
RESUBMITS = 3
#: Shared parts a worker keeps unpickled, latest first.
_KEPT = 8


@contextlib.contextmanager
def dask_executor(address: str | None) -> Iterator[Any]:
    """A Dask cluster's executor for ``tcp://host:port``; None (in-process) without an address."""
    if address is None:
        yield None
        return
    timeout = TIMEOUT
    try:
        from distributed import Client
    except ImportError:
        raise UsageError("needs Dask: pip install 'mpqc[dist]'", field="executor") from None
    import dask

    _check_scheduler(address, timeout)
    # every connection the client opens later (scatter, cancel, close) is bounded the same way
    with dask.config.set({"distributed.comm.timeouts.connect": f"{timeout}s"}):
        try:
            client = Client(address, timeout=f"{timeout}s")
        except OSError as exc:
            raise UsageError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        executor = ClusterExecutor(client, address)
        try:
            yield executor
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
            # a scheduler that stopped answering must not hold the exit too
            with _quiet("distributed"), contextlib.suppress(Exception):
                client.close(timeout=timeout)


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Dask's own warnings about a lost scheduler stay off mpqc's one line."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


class ClusterExecutor(concurrent.futures.Executor):
    """A Dask ``Client`` as a ``concurrent.futures.Executor`` for workers that share nothing with
    this machine (see the module docstring)."""

    def __init__(self, client: Any, address: str) -> None:
        self.client = client
        self.address = address
        self._shared: dict[str, Any] = {}
        self._tasks: weakref.WeakSet[Any] = weakref.WeakSet()
        #: The scheduler stopped answering: nothing more is asked of it.
        self.lost = False

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future:
        def send() -> Any:
            parts = [self._ship(part) for part in (fn, kwargs, *args)]
            task = self.client.submit(_run_parts, *parts, pure=False)
            self._tasks.add(task)
            return task

        return _Watched(send, self)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        futures = [self.submit(fn, *args) for args in zip(*iterables, strict=False)]

        def results() -> Iterator[Any]:
            try:
                for future in futures:
                    yield future.result(timeout)
            finally:
                for future in futures:
                    future.cancel()

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        tasks = list(self._tasks)
        if cancel_futures and tasks and not self.lost:
            with contextlib.suppress(Exception):
                self.client.cancel(tasks, force=True)
        self._shared.clear()

    def check_scheduler(self) -> None:
        """Raise UsageError (one line) unless the scheduler still says who it is in time."""
        try:
            _check_scheduler(self.address, TIMEOUT, during_work=True)
        except UsageError:
            self.lost = True
            raise

    def _ship(self, part: Any) -> tuple[str, Any, bool]:
        """(content key, bytes or the scattered bytes' future, shared) for one task part."""
        with by_value():
            blob = _dumps(part)
        key = hashlib.sha256(blob).hexdigest()
        if len(blob) < SHARED_BYTES:
            return key, blob, False
        if key in self._shared and self._shared[key].status != "finished":
            del self._shared[key]  # lost with the workers that held it: scatter it again
        while key not in self._shared:
            try:
                self._shared[key] = self.client.scatter(
                    blob, broadcast=True, hash=False, timeout=POLL
                )
            except OSError:  # a timeout, or a connection that closed (CommClosedError)
                self.check_scheduler()
                if not self.client.scheduler_info().get("workers"):
                    raise UsageError(
                        f"the Dask scheduler at {self.address} has no workers", field="executor"
                    ) from None
        return key, self._shared[key], True


class _Watched(concurrent.futures.Future):
    """A Dask task's outcome. A wait past ``POLL`` seconds checks that the scheduler answers; a
    task the scheduler cancelled because its scattered input was lost is sent again."""

    def __init__(self, send: Callable[[], Any], executor: ClusterExecutor) -> None:
        super().__init__()
        self._send = send
        self._executor = executor
        self._task = send()

    def cancel(self) -> bool:
        if not self._executor.lost:
            with contextlib.suppress(Exception):
                self._task.cancel()
        return super().cancel()

    def result(self, timeout: float | None = None) -> Any:
        if self.done():
            return super().result(0)
        from distributed.client import FutureCancelledError

        resent = 0
        while True:
            try:
                outcome = self._wait(timeout)
            except FutureCancelledError:
                if self.cancelled() or resent == RESUBMITS:
                    raise
                self._executor.check_scheduler()
                resent += 1
                self._task = self._send()
            except BaseException as exc:
                if self._task.done():  # the task's outcome; else only this wait ended
                    self._settle(exception=exc)
                raise
            else:
                self._settle(outcome=outcome)
                return outcome

    def _wait(self, timeout: float | None) -> Any:
        """The task's result; the scheduler is asked whether it answers after each ``POLL``."""
        if timeout is not None:
            return self._task.result(timeout)
        while True:
            try:
                return self._task.result(POLL)
            except OSError:  # no result yet, or the connection to the scheduler closed
                if self._task.done() and not self._lost_connection():
                    raise  # the task's own error
                self._executor.check_scheduler()
                if self._task.done():
                    raise

    def _settle(self, outcome: Any = None, exception: BaseException | None = None) -> None:
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            if exception is None:
                self.set_result(outcome)
            else:
                self.set_exception(exception)

    def _lost_connection(self) -> bool:
        from distributed.comm import CommClosedError

        return isinstance(self._task.exception(), CommClosedError)


def _dumps(part: Any) -> bytes:
    import cloudpickle

    return cloudpickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL)


#: On a worker: shared parts unpickled, by content key.
_UNPICKLED: collections.OrderedDict[str, Any] = collections.OrderedDict()


def _unpickle(part: tuple[str, bytes, bool]) -> Any:
    key, blob, shared = part
    if not shared:
        return pickle.loads(blob)
    if key not in _UNPICKLED:
        _UNPICKLED[key] = pickle.loads(blob)
        while len(_UNPICKLED) > _KEPT:
            _UNPICKLED.popitem(last=False)
    _UNPICKLED.move_to_end(key)
    return _UNPICKLED[key]


def _run_parts(fn: Any, kwargs: Any, *args: Any) -> Any:
    """A shipped task, run on a worker."""
    function, keywords, *arguments = (_unpickle(part) for part in (fn, kwargs, *args))
    return function(*arguments, **keywords)


def _check_scheduler(address: str, timeout: float, during_work: bool = False) -> None:
    """Raise UsageError unless a Dask scheduler at ``address`` says so within ``timeout``
    (``during_work``: it answered before, and the message says it stopped)."""
    from distributed.comm import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme in ("tcp", "tls"):
            parse_host_port(location)
    except ValueError as exc:
        raise UsageError(
            f"{address!r} is not a scheduler address such as tcp://host:8786 ({exc})",
            field="executor",
        ) from None
    try:
        # connect has its own timeout (a refused or unroutable address is an OSError); the
        # deadline covers the request and the reply too
        identity = asyncio.run(asyncio.wait_for(_identity(address, timeout), 2 * timeout))
    except (asyncio.TimeoutError, TimeoutError):
        silence = f"did not answer within {2 * timeout:g} s"
        raise UsageError(
            f"the Dask scheduler at {address} "
            + (f"stopped answering during the work ({silence})" if during_work else silence),
            field="executor",
        ) from None
    except OSError as exc:
        raise UsageError(
            f"{'lost' if during_work else 'cannot reach'} the Dask scheduler at {address}: {exc}",
            field="executor",
        ) from None
    except Exception as exc:  # noqa: BLE001 - whatever a non-Dask answer makes the comm layer raise
        raise UsageError(
            f"{address} answered, but not as a Dask scheduler ({type(exc).__name__})",
            field="executor",
        ) from None
    if not isinstance(identity, dict) or identity.get("type") != "Scheduler":
        raise UsageError(f"{address} answered, but not as a Dask scheduler", field="executor")


async def _identity(address: str, timeout: float) -> Any:
    from distributed.comm import connect

    comm = await connect(address, timeout=timeout)
    try:
        await comm.write({"op": "identity", "reply": True})
        return await comm.read()
    finally:
        comm.abort()
