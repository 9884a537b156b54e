"""The files a run writes, as one commit: claimed before the work, staged, then renamed into place.

What mpqc writes lands in the user's folders, next to their own files, so three rules hold:

- *Checked before the work.* Every output is claimed up front: it must be a regular file (or
  nothing yet) in a writable folder, with a name the file system accepts; it must not be an input
  (the model, the spec, the calibration data, the task metric's file — by real path and by inode,
  so symlinks and hard links count) nor another output. A failure after minutes of compilation, or
  a report written over the model it describes, is what this prevents.
- *One commit.* Every file is first written in a staging folder beside its destination; only
  when all are complete are they renamed into place, in a fixed order (a model's external data
  before the model, then the reports), with SIGINT and SIGTERM held back meanwhile. An interrupted
  run has written either nothing or everything, and ``written`` says which.
- *No litter.* A staging folder is named ``.mpqc-<host>-<pid>-<random>``: one that a killed run
  (SIGKILL, power loss) left behind is recognisably mpqc's, and the next run that writes to the
  folder removes it once that process is gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import re
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Iterator

import onnx_ir as ir

from mpqc.core.errors import MpqcError
from mpqc.ir import io
from mpqc.ir.scratch import HOST, remove_dead

__all__ = ["OutputError", "Outputs", "Staging", "save"]

_STAGING = re.compile(r"\.mpqc-([0-9a-f]{8})-([0-9]+)-")

_FILE_KINDS = {
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISFIFO: "a FIFO",
    stat.S_ISSOCK: "a socket",
}


class OutputError(MpqcError):
    """An output that cannot or must not be written; ``field`` is the option that names it."""


@dataclasses.dataclass
class Outputs:
    """The inputs a run must not touch, the outputs it claimed, and the files it has written."""

    #: (path, what it is) of every input: no output may resolve to one.
    inputs: list[tuple[pathlib.Path, str]] = dataclasses.field(default_factory=list)
    #: (path, field) of every claimed output, a model's external data file included.
    claimed: list[tuple[pathlib.Path, str]] = dataclasses.field(default_factory=list)
    #: Files renamed into place so far, in order.
    written: list[pathlib.Path] = dataclasses.field(default_factory=list)

    def protect(self, path: str | os.PathLike, what: str) -> None:
        """Never write over ``path`` (a file, or any file in it if a folder), ``what`` naming it;
        outputs claimed already are checked against it (an input found late: external data)."""
        path = pathlib.Path(path)
        for output, field in self.claimed:
            _check_not_input(output, field, path, what)
        self.inputs.append((path, what))

    def claim(self, path: str | os.PathLike, field: str) -> pathlib.Path:
        """Check that a file can be written at ``path`` as the module docstring says; return it.

        ``field`` is the option naming the output (``output``, ``report_json``): errors carry it.
        """
        path = pathlib.Path(path)
        _check_file_target(path, field)
        self._check_distinct(path, field)
        self.claimed.append((path, field))
        remove_stale_staging(path.parent)
        return path

    def claim_model(self, path: str | os.PathLike, field: str) -> pathlib.Path:
        """:meth:`claim` a model's file, and the name its external data would take beside it."""
        path = self.claim(path, field)
        self._check_distinct(_data_path(path), field)
        self.claimed.append((_data_path(path), field))
        return path

    def claim_folder(self, path: str | os.PathLike, field: str) -> pathlib.Path:
        """Check that ``path`` is, or can be created as, a folder to write new files into."""
        path = pathlib.Path(path)
        if path.exists() and not path.is_dir():
            raise OutputError(
                f"{path} is a file: give a folder (it is created if missing)", field=field
            )
        existing = next(folder for folder in (path, *path.parents) if folder.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise OutputError(f"cannot create files in {path}: permission denied", field=field)
        self._check_distinct(path, field)
        self.claimed.append((path, field))
        remove_stale_staging(path)
        return path

    @contextlib.contextmanager
    def commit(self) -> Iterator[Staging]:
        """Stage files in the ``with`` block; leaving it without an error renames them all into
        place. Staging folders are removed either way."""
        staging = Staging(self)
        committed = False
        try:
            yield staging
            with _signals_held():
                for staged, final in staging.moves:
                    try:
                        os.replace(staged, final)
                    except OSError as exc:
                        raise OutputError(self._partial(final, exc)) from exc
                    self.written.append(final)
            committed = True
        finally:
            staging.remove(committed)

    def _partial(self, failed: pathlib.Path, exc: OSError) -> str:
        done = ", ".join(map(str, self.written))
        return f"cannot write {failed} ({exc.strerror or exc}); " + (
            f"{done} written already" if done else "nothing was written"
        )

    def _check_distinct(self, path: pathlib.Path, field: str) -> None:
        for other, what in self.inputs:
            _check_not_input(path, field, other, what)
        for other, other_field in self.claimed:
            if _same(path, other):
                raise OutputError(
                    f"{path} is also where {other_field} goes: give each output its own file",
                    field=field,
                )


class Staging:
    """The files of one commit, written beside their destinations and not yet in place."""

    def __init__(self, outputs: Outputs) -> None:
        #: The outputs this commit writes, and the inputs they must not be.
        self.outputs = outputs
        #: (staged file, destination), in the order they are renamed.
        self.moves: list[tuple[pathlib.Path, pathlib.Path]] = []
        self._folders: dict[pathlib.Path, pathlib.Path] = {}
        #: Destination folders that did not exist (``--emit-pareto DIR``), parents first.
        self._created: list[pathlib.Path] = []

    def model(self, model: ir.Model, path: pathlib.Path) -> pathlib.Path:
        """Stage ``model`` for ``path`` (its external data too, when it has to have some)."""
        staged = self._file(path)
        data = _data_path(path)
        with _reported(path):
            if io.write(model, staged, data.name):
                self.moves.append((staged.parent / data.name, data))
        self.moves.append((staged, path))
        return staged

    def text(self, text: str, path: pathlib.Path) -> pathlib.Path:
        """Stage ``text`` (UTF-8) for ``path``."""
        staged = self._file(path)
        with _reported(path):
            staged.write_text(text, encoding="utf-8")
        self.moves.append((staged, path))
        return staged

    def remove(self, committed: bool) -> None:
        """Remove the staging folders, and the folders made for the destinations unless the
        commit went through (only when empty: rmdir never takes a file with it)."""
        for folder in self._folders.values():
            shutil.rmtree(folder, ignore_errors=True)
        if not committed:
            for folder in reversed(self._created):
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def _file(self, path: pathlib.Path) -> pathlib.Path:
        """A short, fresh name in the staging folder of ``path``'s folder (the destination's own
        name may be as long as the file system allows, so it cannot carry a suffix)."""
        parent = path.parent
        if parent not in self._folders:
            with _reported(path):
                missing = [folder for folder in (parent, *parent.parents) if not folder.exists()]
                for folder in reversed(missing):
                    folder.mkdir()
                    self._created.append(folder)
                prefix = f".mpqc-{HOST}-{os.getpid()}-"
                self._folders[parent] = pathlib.Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        return self._folders[parent] / str(len(self.moves))


def save(model: ir.Model, path: str | os.PathLike) -> pathlib.Path:
    """Write ``model`` to ``path`` as one commit; returns the path.

    Models whose tensors would overflow a single protobuf go to ``<name>.data`` beside the model.
    An existing file at ``path`` is replaced only once the new one is complete.
    """
    outputs = Outputs()
    path = outputs.claim_model(path, "output")
    with outputs.commit() as staging:
        staging.model(model, path)
    return path


def remove_stale_staging(folder: pathlib.Path) -> None:
    """Remove the staging folders in ``folder`` that runs on this machine left when killed."""
    remove_dead(folder, _STAGING)


def _check_file_target(path: pathlib.Path, field: str) -> None:
    """Raise OutputError unless a file can be put at ``path`` by a rename in its folder."""
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: folder {parent} does not exist", field=field)
    limit = _name_max(parent)
    if len(os.fsencode(path.name)) > limit:
        raise OutputError(
            f"cannot write {path}: the name is longer than this file system allows ({limit} bytes)",
            field=field,
        )
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None  # nothing there yet, or a dangling symlink (which the rename replaces)
    if mode is not None and stat.S_ISDIR(mode):
        raise OutputError(
            f"{path} is a directory: give a file name such as {path / 'model.onnx'}", field=field
        )
    kind = next((name for test, name in _FILE_KINDS.items() if mode and test(mode)), None)
    if kind is not None:
        raise OutputError(
            f"{path} is {kind}, not a regular file: mpqc puts a new file in place of its "
            "outputs; name a regular file",
            field=field,
        )
    writable = os.access(parent, os.W_OK | os.X_OK) and (mode is None or os.access(path, os.W_OK))
    if not writable:
        raise OutputError(f"cannot write {path}: permission denied", field=field)


def _check_not_input(path: pathlib.Path, field: str, source: pathlib.Path, what: str) -> None:
    """Raise OutputError if ``path`` is the input ``source`` or an existing file inside it."""
    if _same(path, source) or (source.is_dir() and path.exists() and _inside(path, source)):
        raise OutputError(
            f"{path} is {what}: mpqc never overwrites its inputs; write elsewhere", field=field
        )


def _name_max(folder: pathlib.Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):  # not reported by this file system or platform
        return 255


def _data_path(path: pathlib.Path) -> pathlib.Path:
    """Where the external data of a model saved at ``path`` goes."""
    return path.with_name(path.name + ".data")


def _same(a: pathlib.Path, b: pathlib.Path) -> bool:
    """Whether ``a`` and ``b`` are one file: by real path, or by inode when both exist."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: pathlib.Path, folder: pathlib.Path) -> bool:
    return pathlib.Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


@contextlib.contextmanager
def _reported(path: pathlib.Path) -> Iterator[None]:
    """Staging failures (disk full, a name too long) as one line; nothing is in place yet."""
    try:
        yield
    except OSError as exc:
        raise OutputError(
            f"cannot write {path} ({exc.strerror or exc}); nothing was written"
        ) from exc


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back until the block ends, then deliver the first one received.

    Python runs signal handlers in the main thread only; elsewhere the block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda sig, _: received.append(sig)) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        if received:
            signal.raise_signal(received[0])
