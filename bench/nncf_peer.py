"""NNCF 3.x as a peer recipe, in a virtual environment of its own.

NNCF (OpenVINO's Neural Network Compression Framework, ``nncf`` on PyPI) quantizes ONNX models with
its own post-training pipeline; preset MIXED is its recommended one for accuracy. It brings its
own dependency tree (pandas, scikit-learn, pymoo, openvino-telemetry...), which must never become
mpqc's, so the recipe installs it into ``<cache>/nncf-venv`` on first use and runs
``bench/nncf_quantize.py`` there as a subprocess that reads the float model and the calibration
``.npz`` directory and writes the quantized model. When NNCF cannot be installed the row says why.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

from bench.baselines import QuantizeRequest, RecipeError, register_tool
from bench.cache import cache_dir

NAME = "nncf-mixed"
#: NNCF 3.x with its ONNX backend (onnx and onnxruntime are optional extras of NNCF).
REQUIREMENTS = ("nncf>=3,<4", "onnx", "onnxruntime")
SCRIPT = Path(__file__).resolve().parent / "nncf_quantize.py"
INSTALL_TIMEOUT_S = 1200.0
QUANTIZE_TIMEOUT_S = 1800.0


def venv_dir() -> Path:
    return cache_dir() / "nncf-venv"


def _python(folder: Path) -> Path:
    return folder / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
    return lines[-1] if lines else f"exit code {proc.returncode}"


def ensure_venv(folder: Path | None = None) -> Path:
    """The interpreter of NNCF's environment, created and installed on first use.

    A finished install leaves a marker file; an interrupted one is redone from the start.
    """
    folder = folder or venv_dir()
    python, marker = _python(folder), folder / "installed.txt"
    if marker.exists():
        return python
    try:
        venv.EnvBuilder(clear=True, with_pip=True).create(folder)
        proc = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *REQUIREMENTS],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise RecipeError(f"nncf could not be installed: {type(exc).__name__}: {exc}") from None
    if proc.returncode != 0:
        raise RecipeError(f"nncf could not be installed: pip: {_last_line(proc)}")
    version = subprocess.run(
        [str(python), "-c", "import nncf; print(nncf.__version__)"],
        capture_output=True,
        text=True,
    )
    if version.returncode != 0:
        raise RecipeError(f"nncf was installed but does not import: {_last_line(version)}")
    marker.write_text(version.stdout.strip() + "\n")
    return python


def prepare() -> str:
    """Install NNCF's environment unless it is there (before the recipe is timed); says which."""
    folder = venv_dir()
    ensure_venv(folder)
    return f"nncf {(folder / 'installed.txt').read_text().strip()} in {folder}"


def quantize(request: QuantizeRequest) -> None:
    """``nncf.quantize(..., preset=MIXED)`` on the float model, in NNCF's environment."""
    python = ensure_venv()
    try:
        proc = subprocess.run(
            [
                str(python),
                str(SCRIPT),
                str(request.float_model),
                str(request.calib_dir),
                str(request.output),
            ],
            capture_output=True,
            text=True,
            timeout=QUANTIZE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise RecipeError(f"nncf did not finish within {QUANTIZE_TIMEOUT_S:.0f} s") from None
    if proc.returncode != 0:
        raise RecipeError(f"nncf exited {proc.returncode}: {_last_line(proc)}")


register_tool(
    NAME,
    quantize,
    "NNCF 3.x nncf.quantize, ONNX backend, preset MIXED (own virtual environment)",
)
