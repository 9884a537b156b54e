"""Quantization recipes: onnxruntime's own quantizer, and the hook through which other tools join.

A recipe turns the prepared float model into a quantized file, given calibration data both in memory
and as an ``mpqc --calib`` directory. Recipes live in one registry; ``register_tool`` adds a tool
(a Python function) and ``mpqc_recipe`` wraps an ``mpqc`` command line, so the harness runs them all
in the same loop with the same data, metrics and timers.

The onnxruntime recipes are the peers' strongest and most common ones (see shared/PEERS.md):
``quantize_static`` QDQ with per-channel int8 weights and MinMax ranges, after
``quant_pre_process``, with signed or unsigned 8-bit activations; the careful recipe (u8s8 on
Conv, ConvTranspose, Gemm and MatMul only, ``reduce_range`` on CPUs without VNNI, as onnxruntime
advises there); ``quantize_dynamic``; and 4-bit weight-only ``MatMulNBits`` (block 32).
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from bench import machine
from bench.tasks.base import Inputs


class RecipeError(RuntimeError):
    """A recipe could not produce a model (the harness records the message and moves on)."""


@dataclass(frozen=True)
class QuantizeRequest:
    """Everything a recipe gets: the float model, calibration data two ways, where to write."""

    float_model: Path
    calibration: Sequence[Inputs]
    calib_dir: Path
    output: Path


QuantizeFn = Callable[[QuantizeRequest], None]


@dataclass(frozen=True)
class Recipe:
    """A named way to produce a model; ``quantize`` is None only for the float reference."""

    name: str
    quantize: QuantizeFn | None
    description: str


RECIPES: dict[str, Recipe] = {}


def register_tool(name: str, quantize: QuantizeFn, description: str = "") -> Recipe:
    """Add (or replace) a recipe; it then runs in every benchmark like the built-in ones."""
    recipe = Recipe(name, quantize, description or name)
    RECIPES[name] = recipe
    return recipe


def mpqc_recipe(name: str, arguments: str | Sequence[str], executable: str = "mpqc") -> Recipe:
    """Register ``mpqc FLOAT ARGUMENTS -o OUT --calib DIR`` as recipe ``name``."""
    extra = shlex.split(arguments) if isinstance(arguments, str) else list(arguments)

    def quantize(request: QuantizeRequest) -> None:
        command = [
            executable,
            str(request.float_model),
            *extra,
            "-o",
            str(request.output),
            "--calib",
            str(request.calib_dir),
        ]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
            raise RecipeError(f"{shlex.join(command)} exited {proc.returncode}: {last[0]}")

    return register_tool(name, quantize, f"mpqc {shlex.join(extra)}")


class ListReader:
    """onnxruntime ``CalibrationDataReader`` over in-memory samples, rewindable."""

    def __init__(self, samples: Sequence[Inputs]) -> None:
        self.samples = samples
        self._iterator: Iterator[Inputs] = iter(samples)

    def get_next(self) -> Inputs | None:
        return next(self._iterator, None)

    def rewind(self) -> None:
        self._iterator = iter(self.samples)


def preprocessed(float_model: Path, folder: Path) -> Path:
    """onnxruntime's ``quant_pre_process`` (shape inference + graph optimization), as advised.

    Symbolic shape inference gives up on PP-OCR's and MiniLM's dynamic shapes ("Incomplete symbolic
    shape inference"); then only ONNX shape inference runs, as onnxruntime's own message suggests.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    float_model, output = Path(float_model).resolve(), Path(folder).resolve() / "preprocessed.onnx"
    # It writes temporary models (sym_shape_infer_temp.onnx, <uuid>.data) into the working
    # directory.
    with contextlib.chdir(output.parent):
        try:
            quant_pre_process(str(float_model), str(output))
        except Exception:  # noqa: BLE001 - symbolic shape inference raises bare Exceptions
            quant_pre_process(str(float_model), str(output), skip_symbolic_shape=True)
    return output


def ort_static(
    activation: str, op_types: Sequence[str] | None = None, reduce_range: bool = False
) -> QuantizeFn:
    """``quantize_static`` QDQ, per-channel int8 weights, MinMax, activations ``u8`` or ``s8``;
    ``reduce_range`` keeps weights to 7 bits (onnxruntime's advice for u8s8 without VNNI)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    activation_type = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}[activation]

    def quantize(request: QuantizeRequest) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            source = preprocessed(request.float_model, Path(scratch))
            quantize_static(
                str(source),
                str(request.output),
                ListReader(request.calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=activation_type,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                op_types_to_quantize=list(op_types) if op_types else None,
                reduce_range=reduce_range,
            )

    return quantize


def ort_dynamic(request: QuantizeRequest) -> None:
    """``quantize_dynamic`` with its defaults (int8 weights per tensor, activations quantized at
    run time)."""
    from onnxruntime.quantization import quantize_dynamic

    with tempfile.TemporaryDirectory() as scratch:
        quantize_dynamic(str(preprocessed(request.float_model, Path(scratch))), str(request.output))


def ort_matmul_nbits(request: QuantizeRequest) -> None:
    """4-bit symmetric weight-only ``MatMulNBits``, block 32, for MatMuls with a constant weight.

    ``quant_pre_process`` runs first: it folds weights stored as Constant nodes (PP-OCR's) into
    initializers, without which the quantizer finds no MatMul to convert.
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(
        logging.WARNING
    )  # one INFO line per node
    with tempfile.TemporaryDirectory() as scratch:
        source = onnx.load(str(preprocessed(request.float_model, Path(scratch))))
    quantizer = MatMulNBitsQuantizer(source, bits=4, block_size=32, is_symmetric=True)
    quantizer.process()
    quantizer.model.save_model_to_file(str(request.output), use_external_data_format=False)


FLOAT = Recipe("float", None, "the prepared float model (opset >= 13)")
RECIPES[FLOAT.name] = FLOAT
register_tool("ort-s8s8", ort_static("s8"), "quantize_static QDQ s8s8 per-channel MinMax")
register_tool("ort-u8s8", ort_static("u8"), "quantize_static QDQ u8s8 per-channel MinMax")
#: The recipe a careful onnxruntime user picks (issue 15), the one mpqc's rows are measured against.
CAREFUL = "ort-careful"
CAREFUL_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
register_tool(
    CAREFUL,
    ort_static("u8", CAREFUL_OPS, reduce_range=machine.reduce_range()),
    "quantize_static QDQ u8s8 per-channel MinMax, op_types_to_quantize=["
    + ", ".join(CAREFUL_OPS)
    + f"], reduce_range={machine.reduce_range()}",
)
register_tool("ort-dynamic", ort_dynamic, "quantize_dynamic (int8 weights, dynamic activations)")
register_tool(
    "ort-matmul-nbits4", ort_matmul_nbits, "MatMulNBits 4-bit weight-only, block 32, symmetric"
)
