"""``python -m bench.run``: every recipe on every model, one table per model.

For each model: fetch and prepare the float model, make the task's data, write its calibration
directory, then for each recipe quantize (timed), evaluate the task, compare predictions with
float's, and measure file size and 1- and 2-thread latency (absolute, and relative to float timed
back to back). A recipe that fails is recorded with its error and the run goes on. Results are
written after each model, as JSON (``--out``) and markdown beside it.

mpqc joins through ``--mpqc NAME='ARGS'`` (repeatable), which runs
``mpqc FLOAT ARGS -o OUT --calib DIR``, or from Python through ``bench.baselines.register_tool``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx
import onnxruntime

from bench import machine
from bench import models as registry
from bench.baselines import RECIPES, QuantizeRequest, Recipe, mpqc_recipe
from bench.cache import cache_dir
from bench.measure import file_size_mb, paired_latency, runner, session
from bench.report import markdown
from bench.tasks.base import Evaluation, Task, TaskSizes, write_calib_dir

EVAL_THREADS = 2


def evaluate(model: Path, task: Task) -> Evaluation:
    return task.evaluate(runner(session(model, EVAL_THREADS), task.output_names))


def run_recipe(
    recipe: Recipe,
    float_model: Path,
    task: Task,
    calib_dir: Path,
    workdir: Path,
    reference: Evaluation,
    repeats: int,
    baseline: Path | None = None,
) -> dict[str, Any]:
    """One row of the table: quantize, evaluate, agree with float, size, latency; with a
    ``baseline`` model (the careful onnxruntime recipe's), 1-thread latency paired with it too."""
    row: dict[str, Any] = {"recipe": recipe.name, "description": recipe.description}
    try:
        if recipe.quantize is None:
            path, row["quantize_s"] = float_model, None
        else:
            path = workdir / f"{recipe.name}.onnx"
            path.unlink(missing_ok=True)
            request = QuantizeRequest(float_model, task.calibration_inputs, calib_dir, path)
            # Quantizers drop temporary files into the working directory; keep them out of the
            # caller's.
            with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
                start = time.perf_counter()
                recipe.quantize(request)
                row["quantize_s"] = time.perf_counter() - start
        evaluation = reference if path == float_model else evaluate(path, task)
        row["metrics"] = evaluation.metrics | task.agreement(
            evaluation.predictions, reference.predictions
        )
        row["size_mb"] = file_size_mb(path)
        for threads in (1, 2):
            latency = paired_latency(path, float_model, task.latency_inputs(), threads, repeats)
            row[f"latency_ms_{threads}t"] = latency.ms
            row[f"latency_vs_float_{threads}t"] = latency.vs_reference
        if baseline is not None:
            latency = paired_latency(path, baseline, task.latency_inputs(), 1, repeats)
            row["latency_vs_careful_1t"] = latency.vs_reference
    except Exception as exc:  # noqa: BLE001 - a failing recipe is a result, not the end of the run
        message = str(exc).strip().splitlines()
        row["error"] = f"{type(exc).__name__}: {message[0] if message else ''}"
    return row


@dataclass
class Bench:
    """One model made ready for recipes: its float file, task, calibration folder and float
    reference."""

    model: registry.BenchModel
    sizes: TaskSizes
    float_model: Path
    task: Task
    calib_dir: Path
    workdir: Path
    reference: Evaluation
    repeats: int
    #: the model later rows are also timed against (the careful onnxruntime recipe's), once made
    baseline: Path | None = None

    @classmethod
    def prepare(
        cls, model: registry.BenchModel, sizes: TaskSizes, repeats: int, runs: str = "runs"
    ) -> Bench:
        task = model.task(sizes)
        calib_dir = write_calib_dir(
            task, cache_dir() / "calib" / f"{model.name}-n{sizes.n_calib}-s{sizes.seed}"
        )
        workdir = cache_dir() / runs / model.name
        workdir.mkdir(parents=True, exist_ok=True)
        float_model = model.float_path()
        return cls(
            model,
            sizes,
            float_model,
            task,
            calib_dir,
            workdir,
            evaluate(float_model, task),
            repeats,
        )

    def run(self, recipe: Recipe, log=print) -> dict[str, Any]:
        log(f"[{self.model.name}] {recipe.name} ...")
        row = run_recipe(
            recipe,
            self.float_model,
            self.task,
            self.calib_dir,
            self.workdir,
            self.reference,
            self.repeats,
            self.baseline,
        )
        log(
            f"[{self.model.name}] {recipe.name}: "
            + (row.get("error") or json.dumps(row["metrics"]))
        )
        return row

    def table(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The model's entry in the results JSON."""
        reference = self.reference
        metric_names = [
            self.task.primary_metric,
            *(k for k in reference.metrics if k != self.task.primary_metric),
            *self.task.agreement(reference.predictions, reference.predictions),
        ]
        return {
            "description": self.model.description,
            "source": f"{self.model.requirement}:{self.model.member}",
            "sizes": asdict(self.sizes),
            "metric_names": metric_names,
            "rows": rows,
        }


def benchmark_model(
    model: registry.BenchModel, recipes: list[Recipe], sizes: TaskSizes, repeats: int, log=print
) -> dict[str, Any]:
    """All recipes on one model; float is always evaluated first, as the reference."""
    bench = Bench.prepare(model, sizes, repeats)
    return bench.table([bench.run(recipe, log) for recipe in recipes])


def environment() -> dict[str, Any]:
    """Versions, the machine (CPU model, VNNI, the careful recipe's reduce_range), the commit."""
    return {
        "python": platform.python_version(),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        **machine.describe(),
        **machine.git_commit(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--models",
        default=",".join(registry.MODELS),
        help=f"comma-separated subset of {','.join(registry.MODELS)}",
    )
    parser.add_argument(
        "--recipes", default=None, help="comma-separated recipe names (default: all)"
    )
    parser.add_argument(
        "--mpqc",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help="add an mpqc recipe: NAME='--hw x86_avx2 --max-size 0.25x' (repeatable)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke mode: tiny data sets, 3 latency repeats"
    )
    parser.add_argument("--seed", type=int, default=0, help="data seed (same seed, same data)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="latency repeats (default 10, quick 3)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench/results.json").resolve(),
        help="JSON results; the markdown table goes beside it (.md)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    added = []
    for spec in args.mpqc:
        name, sep, arguments = spec.partition("=")
        if not sep or not name:
            sys.exit(f"--mpqc expects NAME=ARGS, got {spec!r}")
        mpqc_recipe(name, arguments)
        added.append(name)
    # --recipes picks among the built-in recipes; mpqc recipes asked for with --mpqc always run.
    wanted = [*args.recipes.split(","), *added] if args.recipes else list(RECIPES)
    unknown = [name for name in wanted if name not in RECIPES]
    if unknown:
        sys.exit(f"unknown recipes {unknown}; choose from {', '.join(RECIPES)}")
    recipes = [RECIPES[name] for name in wanted]
    try:
        chosen = [registry.get(name) for name in args.models.split(",")]
    except registry.UnknownModelError as exc:
        sys.exit(str(exc.args[0]))
    repeats = args.repeats or (3 if args.quick else 10)
    results: dict[str, Any] = {"environment": environment(), "quick": args.quick, "models": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for model in chosen:
        sizes = TaskSizes(model.sizes.n_eval, model.sizes.n_calib, args.seed)
        results["models"][model.name] = benchmark_model(
            model,
            recipes,
            sizes.quick() if args.quick else sizes,
            repeats,
            log=lambda line: print(line, flush=True),
        )
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
