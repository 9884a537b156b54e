"""NNCF's post-training quantization of an ONNX model, run inside NNCF's own virtual environment.

``python nncf_quantize.py FLOAT.onnx CALIB_DIR OUT.onnx`` reads the float model and every
``CALIB_DIR/*.npz`` (keys are the model's input names, the ``mpqc --calib`` format), runs
``nncf.quantize`` with the ONNX backend and preset MIXED (symmetric weights, asymmetric
activations) on all of those samples, and writes the quantized model. It imports only NNCF, onnx
and numpy, never mpqc or the benchmark: ``bench.nncf_peer`` runs it with the interpreter of the
environment it made for NNCF, so NNCF's dependencies stay out of mpqc's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nncf
import numpy as np
import onnx


def samples(calib_dir: Path) -> list[dict[str, np.ndarray]]:
    """Every calibration sample, in file-name order."""
    found = []
    for path in sorted(calib_dir.glob("*.npz")):
        with np.load(path) as archive:
            found.append({name: archive[name] for name in archive.files})
    if not found:
        raise SystemExit(f"nncf_quantize: no .npz files in {calib_dir}")
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        raise SystemExit("usage: nncf_quantize.py FLOAT.onnx CALIB_DIR OUT.onnx")
    source, calib_dir, output = (Path(arg) for arg in argv)
    data = samples(calib_dir)
    quantized = nncf.quantize(
        onnx.load(str(source)),
        nncf.Dataset(data),
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(data),
    )
    onnx.save(quantized, str(output))
    print(f"nncf {nncf.__version__}: {len(data)} calibration samples, wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
