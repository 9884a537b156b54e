"""Calibration data: headers are checked before the data is read; the split says what it is."""

from __future__ import annotations

import os
import pathlib
import tracemalloc
import zipfile

import numpy as np
import pytest
from models import random_inputs, small_cnn

from mpqc.passes.lib.data import MAX_SAMPLE_BYTES, CalibrationData, DataError, load_calibration


def _compressed_npz(path: pathlib.Path, key: str, shape: tuple[int, ...], dtype: str) -> None:
    """An .npz whose member holds zeros of ``shape``: small on disk, streamed in chunks."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
            header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_2_0(member, header)
            remaining = int(np.prod(shape)) * np.dtype(dtype).itemsize
            chunk = bytes(1 << 24)
            while remaining > 0:
                member.write(chunk[: min(remaining, len(chunk))])
                remaining -= len(chunk)


def _refused_without_reading(folder: pathlib.Path, *fragments: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as info:
            load_calibration(folder, small_cnn())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"{peak} bytes allocated: the array was read"
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_an_oversized_array_is_refused_from_its_header(tmp_path: pathlib.Path) -> None:
    # N is symbolic, so the shape fits the model: only the size gives it away.
    batch = MAX_SAMPLE_BYTES // (3 * 8 * 8 * 4) + 1
    _compressed_npz(tmp_path / "s0.npz", "image", (batch, 3, 8, 8), "<f4")
    assert (tmp_path / "s0.npz").stat().st_size < 2**20
    _refused_without_reading(tmp_path, "s0.npz", "'image'", "MiB", "one sample per file")


@pytest.mark.parametrize(
    ("key", "shape", "dtype", "fragment"),
    [
        ("image", (1, 3, 4096, 4096), "<f4", "the model wants [N,3,8,8]"),
        ("image", (1, 3, 8), "<f4", "rank 4"),
        ("image", (4096, 3, 8, 8), "<f8", "is float64, the model wants float32"),
        ("pixels", (4096, 3, 8, 8), "<f4", "do not match the model's ['image']"),
    ],
    ids=["shape", "rank", "dtype", "name"],
)
def test_an_array_that_does_not_fit_the_model_is_refused_from_its_header(
    tmp_path: pathlib.Path, key: str, shape: tuple[int, ...], dtype: str, fragment: str
) -> None:
    _compressed_npz(tmp_path / "s0.npz", key, shape, dtype)
    _refused_without_reading(tmp_path, fragment)


def test_an_npy_header_is_checked_too(tmp_path: pathlib.Path) -> None:
    with (tmp_path / "s0.npy").open("wb") as file:
        np.lib.format.write_array_header_1_0(
            file, {"descr": "<f4", "fortran_order": False, "shape": (1, 3, 4096, 4096)}
        )
    _refused_without_reading(tmp_path, "the model wants [N,3,8,8]")


def test_a_fifo_in_the_folder_is_refused(tmp_path: pathlib.Path) -> None:
    np.savez(tmp_path / "s0.npz", **random_inputs(small_cnn(), 1)[0])
    os.mkfifo(tmp_path / "s1.npz")
    with pytest.raises(DataError, match="s1.npz is not a regular file"):
        load_calibration(tmp_path, small_cnn())


def test_good_files_still_load(tmp_path: pathlib.Path) -> None:
    samples = random_inputs(small_cnn(), 3)
    for i, sample in enumerate(samples):
        np.savez_compressed(tmp_path / f"s{i}.npz", **sample)
    np.save(tmp_path / "s3.npy", samples[0]["image"])
    data = load_calibration(tmp_path, small_cnn())
    assert len(data) == 4
    np.testing.assert_array_equal(data.samples[3]["image"], samples[0]["image"])


def test_split_holds_out_every_fifth_sample_and_says_so() -> None:
    data = CalibrationData(tuple(random_inputs(small_cnn(), 10)))
    fitting, held = data.split()
    assert (len(fitting), len(held)) == (8, 2)
    assert held.held_out and not fitting.held_out


def test_split_of_too_few_samples_holds_nothing_out_and_says_so() -> None:
    data = CalibrationData(tuple(random_inputs(small_cnn(), 4)))
    fitting, held = data.split()
    assert len(fitting) == len(held) == 4
    assert not held.held_out
