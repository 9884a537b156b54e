"""The onnx package's own backend test models through ``mpqc --uniform w8a8 --hw x86_avx2``.

Models nobody here tuned mpqc to: pytorch-converted/, pytorch-operator/, simple/, real/ and light/
(149 models, opsets 6 to 12; real/ holds only download links, so it contributes none). Each runs
with its own test inputs as calibration data (random ones for light/, which ships none). The
property: no traceback, and a model either compiles or is refused with one line; the refusals are
counted with their reasons in the output, and few of them may be models onnxruntime runs in float.
"""

from __future__ import annotations

import collections
import pathlib
import re
import traceback

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import mpqc
from mpqc.core.errors import MpqcError

pytestmark = pytest.mark.slow
ort.set_default_logger_severity(3)  # old opsets make onnxruntime warn on every session

CORPUS = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data"
FOLDERS = ("pytorch-converted", "pytorch-operator", "simple", "real", "light")
#: Refusals of models onnxruntime runs in float that the corpus run tolerates.
MAX_REFUSED_RUNNABLE = 30


def _models() -> list[pathlib.Path]:
    found = []
    for folder in FOLDERS:
        found += sorted((CORPUS / folder).glob("*/model.onnx"))
        found += sorted((CORPUS / folder).glob("*.onnx"))
    return found


def _feed_names(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def _samples(path: pathlib.Path, model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    """The model's own test inputs, one sample per test_data_set; seeded random ones if none."""
    inputs = _feed_names(model)
    samples = []
    for folder in sorted(path.parent.glob("test_data_set_*")):
        sample = {}
        for index, file in enumerate(sorted(folder.glob("input_*.pb"))):
            tensor = onnx.TensorProto()
            tensor.ParseFromString(file.read_bytes())
            sample[tensor.name or inputs[index].name] = onnx.numpy_helper.to_array(tensor)
        samples.append(sample)
    if samples:
        return samples
    rng = np.random.default_rng(0)
    return [
        {
            v.name: rng.normal(
                size=[d.dim_value or 1 for d in v.type.tensor_type.shape.dim]
            ).astype(onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type))
            for v in inputs
        }
    ]


def _runs_in_float(model: onnx.ModelProto, samples: list[dict[str, np.ndarray]]) -> bool:
    try:
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        session.run(None, samples[0])
    except Exception:  # noqa: BLE001 - any failure means onnxruntime does not run it
        return False
    return True


Outcome = collections.namedtuple("Outcome", "name status reason runs_in_float")


def _compile(path: pathlib.Path) -> Outcome:
    name = (
        f"{path.parent.parent.name}/{path.parent.name if path.name == 'model.onnx' else path.stem}"
    )
    model = onnx.load(path)
    samples = _samples(path, model)
    runs = _runs_in_float(model, samples)
    try:
        options = mpqc.CompileOptions(hw="x86_avx2", uniform="w8a8", calibration=samples)
        mpqc.compile(str(path), options)
    except MpqcError as exc:
        return Outcome(name, "refused", str(exc), runs)
    except Exception:  # noqa: BLE001 - the property under test: nothing else escapes
        return Outcome(name, "crashed", traceback.format_exc(), runs)
    return Outcome(name, "compiled", "", runs)


@pytest.fixture(scope="module")
def outcomes() -> list[Outcome]:
    return [_compile(path) for path in _models()]


def _reason_kind(reason: str) -> str:
    """The reason without the model's names and numbers, to group refusals."""
    return re.sub(r"'[^']*'|\d+", "…", reason)[:140]


def test_the_corpus_is_there() -> None:
    assert len(_models()) == 149


def test_every_model_compiles_or_is_refused_in_one_line(
    outcomes: list[Outcome], capsys: pytest.CaptureFixture[str]
) -> None:
    crashed = [o for o in outcomes if o.status == "crashed"]
    refused = [o for o in outcomes if o.status == "refused"]
    runnable = [o for o in refused if o.runs_in_float]
    with capsys.disabled():
        counts = collections.Counter(o.status for o in outcomes)
        print(f"\nbackend corpus: {dict(counts)}; refused but run by onnxruntime: {len(runnable)}")
        for kind, count in collections.Counter(_reason_kind(o.reason) for o in refused).items():
            print(f"  {count:3d} x {kind}")
        for o in runnable:
            print(f"  onnxruntime runs {o.name} in float, mpqc refused it: {o.reason}")
    assert not crashed, "\n\n".join(f"{o.name}:\n{o.reason}" for o in crashed)
    assert all("\n" not in o.reason for o in refused)
    assert len(runnable) < MAX_REFUSED_RUNNABLE
