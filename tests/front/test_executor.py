"""``--executor``: an address that is no Dask scheduler is one line, in bounded time, before any
work; a server that accepts and never answers used to hold mpqc forever, and one answering garbage
made it allocate exabytes (``internal error: MemoryError``)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

import mpqc
from mpqc import cli, cluster


@contextlib.contextmanager
def _server(answer: bytes | None) -> Iterator[str]:
    """A TCP server on 127.0.0.1 that accepts, sends ``answer`` (None: nothing) and keeps the
    connection open until the test ends; it stops by itself."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    accepted: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(connection)
            if answer is not None:
                connection.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in accepted:
            connection.close()
        listener.close()


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the executor must be refused before any pass runs")

    monkeypatch.setattr(mpqc.pipeline.Pipeline, "run_ir", refuse)


def _mpqc_executor(capsys, cnn_path, address: str) -> tuple[int, str, float]:
    out = cnn_path.parent / "q.onnx"
    start = time.monotonic()
    code = cli.main([str(cnn_path), "--hw", "generic", "-o", str(out), "--executor", address])
    elapsed = time.monotonic() - start
    assert not out.exists()
    return code, capsys.readouterr().err, elapsed


@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        (None, "the Dask scheduler at {address} did not answer within 1 s"),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "{address} answered, but not as a Dask scheduler"),
        (b"\xff" * 64, "{address} answered, but not as a Dask scheduler"),
    ],
    ids=["silent", "http", "garbage"],
)
def test_a_server_that_is_no_scheduler_is_one_line_in_bounded_time(
    capsys, cnn_path, monkeypatch, no_work, answer, fragment
) -> None:
    pytest.importorskip("distributed")
    monkeypatch.setattr(cluster, "TIMEOUT", 0.5)
    with _server(answer) as address:
        code, err, elapsed = _mpqc_executor(capsys, cnn_path, address)
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith("mpqc: --executor: " + fragment.format(address=address)), err
    assert elapsed < 30


def test_an_address_that_is_no_url_is_one_line(capsys, cnn_path, no_work) -> None:
    pytest.importorskip("distributed")
    code, err, _ = _mpqc_executor(capsys, cnn_path, "not a url")
    assert code == 1 and err == (
        "mpqc: --executor: 'not a url' is not a scheduler address such as tcp://host:8786 "
        "(missing port number in address 'not a url')\n"
    )
