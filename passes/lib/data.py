"""Calibration data: where samples come from, and checking them against the model once.

Users bring data in three shapes: a directory of ``.npz`` files (one sample per file, keys = input
names) or ``.npy`` files (single-input models), an onnxruntime ``CalibrationDataReader``, or any
iterable of ``{input name: array}`` dicts. All become one ``CalibrationData``: an ordered list of
samples, validated against the model's inputs (names, dtypes, ranks, static dims, finite values) so
that a mismatch is reported once, clearly, before any pass spends time on it.

Files are checked twice: their array headers (names, dtypes, shapes, size) before any data is read,
since a 1 MB ``.npz`` can decompress to gigabytes, and then their values.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any

import numpy as np
import onnx_ir as ir

from mpqc.core.errors import MpqcError

__all__ = ["MAX_SAMPLE_BYTES", "CalibrationData", "DataError", "load_calibration"]

Sample = dict[str, np.ndarray]
#: (shape, dtype) of an array, as a file's header or an array in memory states it.
Layout = tuple[tuple[int, ...], np.dtype]

#: One array of one sample in a file: a sample is one inference's inputs, so anything larger is a
#: batch saved as one sample, or a decompression bomb.
MAX_SAMPLE_BYTES = 256 * 2**20


class DataError(MpqcError):
    """Calibration or evaluation data that does not fit the model."""


@dataclasses.dataclass(frozen=True)
class CalibrationData:
    samples: tuple[Mapping[str, np.ndarray], ...]
    source: str = "data"
    held_out: bool = False
    """The samples were set aside before any range was fitted, so scores on them are held-out."""

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Mapping[str, np.ndarray]]:
        return iter(self.samples)

    def split(self, every: int = 5) -> tuple[CalibrationData, CalibrationData]:
        """(calibration, held-out): every ``every``-th sample is held out, deterministically.

        Verification and exact evaluation must not score a model on the data its ranges were fitted
        to; with fewer than ``every`` samples nothing can be held out, both halves are the same
        samples, and the second says so (``held_out`` is False).
        """
        if len(self.samples) < every:
            return self, self
        held = tuple(s for i, s in enumerate(self.samples) if i % every == every - 1)
        kept = tuple(s for i, s in enumerate(self.samples) if i % every != every - 1)
        return (
            dataclasses.replace(self, samples=kept),
            dataclasses.replace(
                self, samples=held, source=self.source + " (held out)", held_out=True
            ),
        )

    def check(self, model: ir.Model) -> None:
        """Raise DataError unless every sample feeds ``model``'s inputs exactly."""
        inputs = _graph_inputs(model)
        for index, sample in enumerate(self.samples):
            where = f"{self.source}, sample {index}"
            arrays = {name: np.asarray(array) for name, array in sample.items()}
            _check_layouts(where, {k: (a.shape, a.dtype) for k, a in arrays.items()}, inputs)
            for name, array in arrays.items():
                if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
                    raise DataError(f"{where}: input '{name}' contains NaN or Inf")


def _graph_inputs(model: ir.Model) -> dict[str, ir.Value]:
    return {v.name: v for v in model.graph.inputs if not v.is_initializer()}


def _check_layouts(
    where: str, layouts: Mapping[str, Layout], inputs: Mapping[str, ir.Value]
) -> None:
    """Raise DataError unless the arrays' names, dtypes and shapes are the model's inputs'."""
    missing = sorted(set(inputs) - set(layouts))
    extra = sorted(set(layouts) - set(inputs))
    if missing or extra:
        raise DataError(
            f"{where}: inputs {sorted(layouts)} do not match the model's {sorted(inputs)}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unknown {extra})" if extra else "")
        )
    for name, value in inputs.items():
        shape, dtype = layouts[name]
        if value.dtype is not None and dtype != value.dtype.numpy():
            raise DataError(
                f"{where}: input '{name}' is {dtype}, the model wants {value.dtype.numpy()}"
            )
        if value.shape is None:
            continue
        if len(shape) != len(value.shape):
            raise DataError(
                f"{where}: input '{name}' has shape {list(shape)}, the model wants rank "
                f"{len(value.shape)} {_dims(value)}"
            )
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, int) and shape[axis] != dim:
                raise DataError(
                    f"{where}: input '{name}' has shape {list(shape)}, the model wants "
                    f"{_dims(value)}"
                )


def _dims(value: ir.Value) -> str:
    assert value.shape is not None
    return "[" + ",".join(str(d) if d is not None else "?" for d in value.shape) + "]"


def load_calibration(source: Any, model: ir.Model | None = None) -> CalibrationData:
    """Build CalibrationData from a directory, a CalibrationDataReader or an iterable of dicts.

    With ``model``, the data is checked against its inputs (``DataError`` on a mismatch); files are
    checked from their headers before they are read. A ``.npy`` file carries no name: it feeds the
    model's single input, so it needs ``model``.
    """
    if isinstance(source, CalibrationData):
        data = source
    elif isinstance(source, (str, os.PathLike)):
        data = _from_directory(pathlib.Path(source), model)
    elif hasattr(source, "get_next"):
        samples = []
        while (item := source.get_next()) is not None:
            samples.append(_sample(item, "CalibrationDataReader"))
        data = CalibrationData(tuple(samples), source=type(source).__name__)
    elif isinstance(source, Iterable):
        data = CalibrationData(
            tuple(_sample(item, "calibration iterable") for item in source),
            source="calibration iterable",
        )
    else:
        raise DataError(
            f"cannot use a {type(source).__name__} as calibration data: give a directory, a "
            "CalibrationDataReader or an iterable of input dicts"
        )
    if model is not None:
        data.check(model)
    return data


def _sample(item: Any, where: str) -> Sample:
    if not isinstance(item, Mapping):
        raise DataError(
            f"{where}: each sample must be a dict of input name -> array, got {type(item).__name__}"
        )
    return {str(k): np.asarray(v) for k, v in item.items()}


def _from_directory(path: pathlib.Path, model: ir.Model | None) -> CalibrationData:
    if not path.exists():
        raise DataError(f"calibration directory {path} does not exist")
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.iterdir() if p.suffix in (".npz", ".npy"))
    )
    if not files:
        raise DataError(
            f"{path} has no .npz or .npy files: write one sample per file, keys = model input names"
        )
    inputs = None if model is None else _graph_inputs(model)
    samples: list[Sample] = []
    for file in files:
        if not file.is_file():
            raise DataError(f"{file} is not a regular file: calibration files are .npz or .npy")
        if file.suffix == ".npy" and (inputs is None or len(inputs) != 1):
            raise DataError(
                f"{file}: .npy files work only for single-input models; use .npz with one key "
                "per input"
            )
        try:
            layouts = _headers(file, None if inputs is None else next(iter(inputs)))
            _check_sizes(str(file), layouts)
            if inputs is not None:
                _check_layouts(str(file), layouts, inputs)
            if file.suffix == ".npz":
                with np.load(file, allow_pickle=False) as archive:
                    samples.append({k: archive[k] for k in archive.files})
            else:
                samples.append(dict.fromkeys(layouts, np.load(file, allow_pickle=False)))
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{file} is not a readable numpy file ({exc})") from None
    return CalibrationData(tuple(samples), source=str(path))


def _headers(file: pathlib.Path, npy_name: str | None) -> dict[str, Layout]:
    """Name -> (shape, dtype) of every array in ``file``, from the headers alone."""
    if file.suffix == ".npy":
        with file.open("rb") as stream:
            return {str(npy_name): _header(stream)}
    with zipfile.ZipFile(file) as archive:
        layouts = {}
        for member in archive.namelist():
            with archive.open(member) as stream:
                layouts[member.removesuffix(".npy")] = _header(stream)
        return layouts


def _header(stream: IO[bytes]) -> Layout:
    version = np.lib.format.read_magic(stream)
    read = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }.get(version)
    if read is None:
        raise ValueError(f"numpy format version {version} is not supported")
    shape, _, dtype = read(stream)
    return tuple(shape), dtype


def _check_sizes(where: str, layouts: Mapping[str, Layout]) -> None:
    for name, (shape, dtype) in layouts.items():
        size = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if size > MAX_SAMPLE_BYTES:
            raise DataError(
                f"{where}: '{name}' would take {size / 2**20:.0f} MiB, more than one sample's "
                f"{MAX_SAMPLE_BYTES // 2**20} MiB: write one sample per file"
            )
