"""Calibration data: where samples come from, and checking them against the model once.

Users bring data in three shapes: a directory of ``.npz`` files (one sample per file, keys = input
names) or ``.npy`` files (single-input models), an onnxruntime ``CalibrationDataReader``, or any
iterable of ``{input name: array}`` dicts. All become one ``CalibrationData``: an ordered list of
samples, validated against the model's inputs (names, dtypes, ranks, static dims, finite values) so
that a mismatch is reported once, clearly, before any pass spends time on it.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from mpqc.core.errors import MpqcError

__all__ = ["CalibrationData", "DataError", "load_calibration"]

Sample = dict[str, np.ndarray]


class DataError(MpqcError):
    """Calibration or evaluation data that does not fit the model."""


@dataclasses.dataclass(frozen=True)
class CalibrationData:
    samples: tuple[Mapping[str, np.ndarray], ...]
    source: str = "data"

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Mapping[str, np.ndarray]]:
        return iter(self.samples)

    def split(self, every: int = 5) -> tuple[CalibrationData, CalibrationData]:
        """(calibration, held-out): every ``every``-th sample is held out, deterministically.

        Verification and exact evaluation must not score a model on the data its ranges were fitted
        to; with fewer than ``every`` samples nothing can be held out and both halves are the same.
        """
        if len(self.samples) < every:
            return self, self
        held = tuple(s for i, s in enumerate(self.samples) if i % every == every - 1)
        kept = tuple(s for i, s in enumerate(self.samples) if i % every != every - 1)
        return (
            dataclasses.replace(self, samples=kept),
            dataclasses.replace(self, samples=held, source=self.source + " (held out)"),
        )

    def check(self, model: ir.Model) -> None:
        """Raise DataError unless every sample feeds ``model``'s inputs exactly."""
        inputs = {v.name: v for v in model.graph.inputs if not v.is_initializer()}
        for index, sample in enumerate(self.samples):
            where = f"{self.source}, sample {index}"
            missing = sorted(set(inputs) - set(sample))
            extra = sorted(set(sample) - set(inputs))
            if missing or extra:
                raise DataError(
                    f"{where}: inputs {sorted(sample)} do not match the model's {sorted(inputs)}"
                    + (f" (missing {missing})" if missing else "")
                    + (f" (unknown {extra})" if extra else "")
                )
            for name, value in inputs.items():
                _check_array(where, name, np.asarray(sample[name]), value)


def _check_array(where: str, name: str, array: np.ndarray, value: ir.Value) -> None:
    if value.dtype is not None:
        expected = value.dtype.numpy()
        if array.dtype != expected:
            raise DataError(f"{where}: input '{name}' is {array.dtype}, the model wants {expected}")
    if value.shape is not None:
        if array.ndim != len(value.shape):
            raise DataError(
                f"{where}: input '{name}' has shape {list(array.shape)}, the model wants rank {len(value.shape)} {_dims(value)}"
            )
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, int) and array.shape[axis] != dim:
                raise DataError(
                    f"{where}: input '{name}' has shape {list(array.shape)}, the model wants {_dims(value)}"
                )
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise DataError(f"{where}: input '{name}' contains NaN or Inf")


def _dims(value: ir.Value) -> str:
    assert value.shape is not None
    return "[" + ",".join(str(d) if d is not None else "?" for d in value.shape) + "]"


def load_calibration(source: Any, input_names: list[str] | None = None) -> CalibrationData:
    """Build CalibrationData from a directory, a CalibrationDataReader or an iterable of dicts.

    ``input_names`` is needed only for ``.npy`` files, which carry no name: they feed the model's
    single input.
    """
    if isinstance(source, CalibrationData):
        return source
    if isinstance(source, (str, os.PathLike)):
        return _from_directory(pathlib.Path(source), input_names)
    if hasattr(source, "get_next"):
        samples = []
        while (item := source.get_next()) is not None:
            samples.append(_sample(item, "CalibrationDataReader"))
        return CalibrationData(tuple(samples), source=type(source).__name__)
    if isinstance(source, Iterable):
        return CalibrationData(
            tuple(_sample(item, "calibration iterable") for item in source),
            source="calibration iterable",
        )
    raise DataError(
        f"cannot use a {type(source).__name__} as calibration data: give a directory, a CalibrationDataReader or an iterable of input dicts"
    )


def _sample(item: Any, where: str) -> Sample:
    if not isinstance(item, Mapping):
        raise DataError(
            f"{where}: each sample must be a dict of input name -> array, got {type(item).__name__}"
        )
    return {str(k): np.asarray(v) for k, v in item.items()}


def _from_directory(path: pathlib.Path, input_names: list[str] | None) -> CalibrationData:
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
    samples: list[Sample] = []
    for file in files:
        try:
            if file.suffix == ".npz":
                with np.load(file, allow_pickle=False) as archive:
                    samples.append({k: archive[k] for k in archive.files})
            else:
                if not input_names or len(input_names) != 1:
                    raise DataError(
                        f"{file}: .npy files work only for single-input models; use .npz with one key per input"
                    )
                samples.append({input_names[0]: np.load(file, allow_pickle=False)})
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{file} is not a readable numpy file ({exc})") from None
    return CalibrationData(tuple(samples), source=str(path))
