"""``--executor``: a Dask scheduler's executor, reached in bounded time or refused in one line.

Dask's ``Client`` bounds only the TCP connect: a server that accepts and then never answers holds
it forever, and one that answers with something else than Dask's protocol can make it read a
garbage frame length and try to allocate exabytes. So the scheduler is first asked who it is, over
Dask's own comm layer, under one deadline for connect, request and reply; only a scheduler that
answers as one gets a ``Client``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

from mpqc.core.errors import UsageError

__all__ = ["dask_executor"]

#: Seconds the scheduler has to accept the connection and say who it is.
TIMEOUT = 10.0


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
    _check_scheduler(address, timeout)
    try:
        client = Client(address, timeout=f"{timeout}s")
    except OSError as exc:
        raise UsageError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    with client:
        yield client.get_executor()


def _check_scheduler(address: str, timeout: float) -> None:
    """Raise UsageError unless a Dask scheduler at ``address`` says so within ``timeout``."""
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
        raise UsageError(
            f"the Dask scheduler at {address} did not answer within {2 * timeout:g} s",
            field="executor",
        ) from None
    except OSError as exc:
        raise UsageError(
            f"cannot reach the Dask scheduler at {address}: {exc}", field="executor"
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
