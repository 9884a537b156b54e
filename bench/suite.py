"""``python -m bench.suite``: the whole real-model benchmark of issue #8 in one command.

Per model, in one run on the same data: float; every onnxruntime recipe (``quantize_static`` QDQ
per-channel s8s8, u8s8 and u8s8 on Conv+MatMul only, MinMax, after ``quant_pre_process`` on the
opset-13 model; ``quantize_dynamic``; 4-bit ``MatMulNBits`` where the model has MatMuls); mpqc
uniform w8a8; then mpqc's default pipeline under ``--max-size`` = 1.0x, 0.75x and 0.5x of
onnxruntime u8s8's file, for every search strategy, without and with the ``recover`` pass (rows
appear once that pass is registered). Each row: task metric, agreement with float, MB, latency 1T/2T
(median of repeats, and back to back against float), wall time, the cost model's predicted latency,
and which layers the compiler kept above the cheapest bits (from ``mpqc --report-json``).

The default pipeline is run in two steps that give the same model: the analysis
(``canonicalize,calibrate,sensitivity-output,sensitivity-entropy,cost``) once per model, saved with
its annotations; then ``mpqc ANALYSED --pipeline 'search{...},[recover,]lower-qdq,verify'`` per
recipe. The search recipes differ only after the analysis, so repeating it 42 times would measure
nothing new; each row's ``quantize_s`` is its own wall time plus the analysis time, which is what
one user's ``mpqc`` call costs.

Results go to ``bench/results/<model>.json`` (one file per model, so models can be run apart);
``bench/RESULTS.md`` §2 and ``bench/plots/*.png`` are then regenerated from every JSON present.
``--smoke`` is the CI version: the orientation model at quick scale, onnxruntime u8s8, mpqc w8a8 and
one ILP search, written under the cache, RESULTS.md untouched.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx

from bench import models as registry
from bench.baselines import FLOAT, RECIPES, QuantizeRequest, Recipe, RecipeError
from bench.cache import cache_dir
from bench.run import Bench, environment
from bench.tasks.base import TaskSizes
from mpqc.passes.pipelines import search_step

HW = "x86_avx2"
STRATEGIES = ("ilp", "greedy", "eagl", "nsga2", "mohaq", "nemo", "haq", "hago", "ompq")
BUDGETS = (1.0, 0.75, 0.5)
#: onnxruntime recipes every model gets; MatMulNBits joins where the model has MatMuls.
ORT_RECIPES = ("ort-s8s8", "ort-u8s8", "ort-u8s8-conv-matmul", "ort-dynamic")
#: The recipe whose file size the budgets are fractions of (the issue's "onnxruntime int8").
SIZE_ANCHOR = "ort-u8s8"
#: The analysis the search recipes share: the default pipeline up to the search (every metric a
#: strategy reads: EAGL its entropy scores, OMPQ its orthogonality, the others output perturbation).
ANALYSIS = (
    "canonicalize,calibrate,sensitivity-output{{samples={samples}}},sensitivity-entropy,"
    "sensitivity-orthogonality,cost"
)
#: Strategies whose method names its own damage score; the rest read output perturbation.
METRICS = {"eagl": "entropy", "ompq": "orthogonality"}
RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
PLOTS_DIR = Path(__file__).resolve().parent / "plots"


@dataclass(frozen=True)
class Mode:
    """How big a run is: data scale, latency repeats, sensitivity samples, search budgets."""

    name: str
    quick_data: bool
    repeats: int
    sens_samples: int
    #: calibration samples one exact evaluation runs (nsga2, mohaq, nemo, haq, hago)
    exact_samples: int
    #: strategy options that keep the exact-evaluation strategies to a bounded number of evaluations
    limits: dict[str, str] = field(default_factory=dict)
    strategies: tuple[str, ...] = STRATEGIES
    budgets: tuple[float, ...] = BUDGETS
    models: tuple[str, ...] = tuple(registry.MODELS)
    ort_recipes: tuple[str, ...] = ORT_RECIPES
    #: add 4-bit MatMulNBits when the model has MatMuls
    matmul_nbits: bool = True
    timeout_s: float = 1800.0


MODES = {
    "full": Mode(
        "full",
        False,
        10,
        8,
        4,
        {
            "nsga2": "generations=6",
            "mohaq": "generations=6",
            "haq": "episodes=30",
            "nemo": "max_evaluations=80",
        },
        timeout_s=900.0,
    ),
    "quick": Mode(
        "quick",
        True,
        3,
        4,
        4,
        {
            "nsga2": "generations=4",
            "mohaq": "generations=4",
            "haq": "episodes=25",
            "nemo": "max_evaluations=50",
        },
    ),
    "smoke": Mode(
        "smoke",
        True,
        3,
        4,
        4,
        strategies=("ilp",),
        budgets=(0.5,),
        models=("orientation",),
        ort_recipes=("ort-u8s8",),
        matmul_nbits=False,
        timeout_s=240.0,
    ),
}


def recover_available() -> bool:
    """Whether the ``recover`` pass is registered (it is built in parallel with this suite)."""
    from mpqc import passes

    return "recover" in passes.names()


def has_matmul(model: Path) -> bool:
    graph = onnx.load(str(model), load_external_data=False).graph
    return any(node.op_type == "MatMul" for node in graph.node)


def mpqc_executable() -> list[str]:
    """The ``mpqc`` command of this interpreter's environment (the suite may run without it on
    PATH)."""
    found = shutil.which("mpqc", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "mpqc.cli"]


def cli_recipe(
    name: str,
    model: Path | None,
    arguments: Sequence[str],
    report: Path,
    timeout_s: float,
    description: str,
) -> Recipe:
    """``mpqc MODEL ARGS -o OUT --calib DIR --report-json REPORT``, killed after ``timeout_s``.

    ``model`` replaces the float model the harness hands over (the search recipes start from the
    analysed model). Unlike ``bench.baselines.mpqc_recipe`` it bounds the wall time, so one runaway
    search costs a row, not the run, and it asks for the report the table's extra columns come from.
    """

    def quantize(request: QuantizeRequest) -> None:
        report.unlink(missing_ok=True)
        command = [
            *mpqc_executable(),
            str(model or request.float_model),
            *arguments,
            "-o",
            str(request.output),
            "--calib",
            str(request.calib_dir),
            "--report-json",
            str(report),
        ]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise RecipeError(f"mpqc did not finish within {timeout_s:.0f} s") from None
        if proc.returncode != 0:
            last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
            raise RecipeError(f"mpqc exited {proc.returncode}: {last[0]}")

    return Recipe(name, quantize, description)


def search_pipeline(strategy: str, recover: bool, mode: Mode) -> str:
    """A budget row's steps after the analysis: a size-only search, then recover/lower/verify.

    ``latency_cap=false``: by default mpqc holds a size-only budget to uniform w8a8's predicted
    latency and refuses budgets only slower models meet. The suite asks what each strategy reaches
    at each size, and the row's measured latency says what that costs.
    """
    search = search_step(
        strategy,
        METRICS.get(strategy, "output"),
        recover,
        *filter(None, [f"samples={mode.exact_samples}", mode.limits.get(strategy, "")]),
        "latency_cap=false",
    )
    return ",".join(filter(None, [search, "recover" if recover else "", "lower-qdq", "verify"]))


@dataclass(frozen=True)
class Analysis:
    """The analysed model, how long the analysis took, and its per-layer cost tables."""

    path: Path
    seconds: float
    costs: dict[str, dict[str, dict[str, float]]]
    fixed: dict[str, float]

    def predicted(self, bits: dict[str, dict[str, int]] | None) -> dict[str, float]:
        """The cost model's size and latency for per-layer bits (layers not named stay float)."""
        bits = bits or {}
        totals = {
            "latency_s": self.fixed.get("latency_s", 0.0),
            "size": self.fixed.get("size", 0.0),
        }
        for name, table in self.costs.items():
            chosen = bits.get(name)
            key = f"w{chosen['w']}a{chosen['a']}" if chosen and chosen["w"] != 32 else "float"
            entry = table.get(key) or table.get("float")
            if entry is None:
                continue
            for objective in totals:
                totals[objective] += float(entry[objective])
        return totals


def analyse(bench: Bench, mode: Mode) -> Analysis:
    """Run the shared analysis once and save it with its annotations."""
    import mpqc
    from mpqc import ir as mir
    from mpqc.ir import annotations

    start = time.perf_counter()
    result = mpqc.compile(
        str(bench.float_model),
        mpqc.CompileOptions(
            hw=HW,
            calibration=str(bench.calib_dir),
            pipeline=ANALYSIS.format(samples=mode.sens_samples),
        ),
    )
    path = mir.save(result.ir_model, bench.workdir / "analysed.onnx")
    seconds = time.perf_counter() - start
    graph = result.ir_model.graph
    costs = {
        layer.name: annotations.COST.get(layer.node)
        for layer in mir.quantizable_layers(graph)
        if annotations.COST.has(layer.node)
    }
    fixed = (annotations.MODEL_COST.get(result.ir_model) or {}).get("fixed", {})
    return Analysis(Path(path), seconds, costs, fixed)


def explain_row(row: dict[str, Any], report: Path, analysis: Analysis | None) -> None:
    """Add what ``mpqc --report-json`` says to a row: predicted cost, and the layers kept high."""
    if "error" in row or not report.exists():
        return
    data = json.loads(report.read_text())
    if analysis is not None:
        row["predicted"] = analysis.predicted(data.get("bits"))
    explanation = data.get("explanation") or {}
    if explanation.get("summary"):
        row["kept"] = explanation["summary"]
    mix: dict[str, int] = {}
    for bits in (data.get("bits") or {}).values():
        key = f"w{bits['w']}a{bits['a']}"
        mix[key] = mix.get(key, 0) + 1
    row["bits_mix"] = dict(sorted(mix.items()))


def run_model(
    model: registry.BenchModel,
    mode: Mode,
    sizes: TaskSizes,
    strategies: Sequence[str],
    budgets: Sequence[float],
    recover_for: Sequence[str],
    save: Callable[[dict[str, Any]], None],
    previous: dict[str, dict[str, Any]] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every recipe of ``mode`` on one model; ``save`` gets the results entry after every row (a
    long run that is stopped keeps what it measured). ``recover_for`` names the strategies that also
    run +recover. ``previous`` holds rows of an earlier run on the same data by recipe name: those
    that succeeded are kept instead of measured again (``--resume``)."""
    bench = Bench.prepare(model, sizes, mode.repeats, runs=f"suite-{mode.name}")
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    reusable = {name: row for name, row in (previous or {}).items() if "error" not in row}

    def measure(recipe: Recipe) -> dict[str, Any]:
        if recipe.name in reusable:
            log(f"[{model.name}] {recipe.name}: kept from the earlier run")
            return reusable[recipe.name]
        return bench.run(recipe, log)

    def entry() -> dict[str, Any]:
        table = bench.table(rows)
        table.update(
            mode=mode.name,
            hw=HW,
            analysis_s=analysis.seconds if analysis else None,
            notes=notes,
            analysis_pipeline=ANALYSIS.format(samples=mode.sens_samples),
        )
        return table

    def add(row: dict[str, Any]) -> None:
        rows.append(row)
        save(entry())

    analysis: Analysis | None = None
    add(measure(FLOAT))
    ort_names = list(mode.ort_recipes)
    if mode.matmul_nbits and has_matmul(bench.float_model):
        ort_names.append("ort-matmul-nbits4")
    elif mode.matmul_nbits:
        notes.append("ort-matmul-nbits4 not run: the model has no MatMul")
    for name in ort_names:
        add(measure(RECIPES[name]))
    anchor = next(r for r in rows if r["recipe"] == SIZE_ANCHOR)
    analysis_error = ""
    try:
        analysis = analyse(bench, mode)
        log(f"[{model.name}] analysis {analysis.seconds:.1f} s")
        rows[0]["predicted"] = analysis.predicted(
            {}
        )  # the float row: every layer at the cost table's float
    except Exception as exc:  # noqa: BLE001 - the failure becomes every search row's reason
        analysis_error = (
            f"analysis failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
        )
    report = bench.workdir / "mpqc-w8a8.report.json"
    w8a8 = cli_recipe(
        "mpqc-w8a8",
        None,
        ["--hw", HW, "--uniform", "w8a8"],
        report,
        mode.timeout_s,
        f"mpqc --hw {HW} --uniform w8a8",
    )
    row = measure(w8a8)
    explain_row(
        row, report, analysis
    )  # a kept row too: its report is still on disk, the analysis may be new
    add(row)
    if not recover_available():
        recover_for = ()
        notes.append("+recover rows not run: the `recover` pass is not registered in this mpqc")
    for strategy in strategies:
        for factor in budgets:
            for recover in (False, True) if strategy in recover_for else (False,):
                name = f"mpqc-{strategy}@{factor:g}x" + ("+recover" if recover else "")
                if analysis is None or "error" in anchor:
                    reason = (
                        analysis_error if analysis is None else f"no budget: {SIZE_ANCHOR} failed"
                    )
                    add({"recipe": name, "description": "", "error": reason})
                    continue
                budget_mb = anchor["size_mb"] * factor
                pipeline = search_pipeline(strategy, recover, mode)
                arguments = ["--hw", HW, "--max-size", f"{budget_mb:.4f}MB", "--pipeline", pipeline]
                report = bench.workdir / f"{name}.report.json"
                recipe = cli_recipe(
                    name,
                    analysis.path,
                    arguments,
                    report,
                    mode.timeout_s,
                    f"mpqc {shlex.join(arguments)}",
                )
                if name in reusable:
                    add(measure(recipe))
                    continue
                row = bench.run(recipe, log)
                row.update(
                    strategy=strategy, budget_factor=factor, recover=recover, budget_mb=budget_mb
                )
                if "quantize_s" in row:
                    row["search_s"] = row["quantize_s"]
                    row["quantize_s"] += analysis.seconds
                explain_row(row, report, analysis)
                add(row)
    return entry()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.suite", description=__doc__.split("\n\n")[0]
    )
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument(
        "--quick", action="store_true", help="small data sets, 3 latency repeats, short searches"
    )
    scale.add_argument(
        "--smoke", action="store_true", help="the CI run: orientation, u8s8, w8a8, one ILP search"
    )
    parser.add_argument("--models", help=f"comma-separated subset of {','.join(registry.MODELS)}")
    parser.add_argument("--strategies", help=f"comma-separated subset of {','.join(STRATEGIES)}")
    parser.add_argument("--budgets", help="fractions of onnxruntime u8s8's size, e.g. 1,0.5")
    parser.add_argument(
        "--recover-for", help="strategies that also run with recover (default: every one run)"
    )
    parser.add_argument(
        "--n-eval", type=int, help="evaluation samples (default: the model's, or quick's)"
    )
    parser.add_argument(
        "--n-calib", type=int, help="calibration samples (default: the model's, or quick's)"
    )
    parser.add_argument("--repeats", type=int, help="latency repeats")
    parser.add_argument("--seed", type=int, default=0, help="data seed (same seed, same data)")
    parser.add_argument(
        "--out", type=Path, help="folder for <model>.json (default bench/results; smoke: the cache)"
    )
    parser.add_argument(
        "--no-render", action="store_true", help="do not rewrite RESULTS.md §2 and the plots"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the successful rows of <model>.json in --out (same data) and measure the rest",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.repeats:
        mode = replace(mode, repeats=args.repeats)
    try:
        chosen = [
            registry.get(name) for name in (args.models.split(",") if args.models else mode.models)
        ]
    except registry.UnknownModelError as exc:
        sys.exit(str(exc.args[0]))
    strategies = args.strategies.split(",") if args.strategies else list(mode.strategies)
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        sys.exit(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    budgets = [float(b) for b in args.budgets.split(",")] if args.budgets else list(mode.budgets)
    out = args.out or (cache_dir() / "smoke" if args.smoke else RESULTS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    recover_for = args.recover_for.split(",") if args.recover_for is not None else strategies
    for model in chosen:
        sizes = model.sizes.quick() if mode.quick_data else model.sizes
        sizes = TaskSizes(args.n_eval or sizes.n_eval, args.n_calib or sizes.n_calib, args.seed)

        def save(entry: dict[str, Any], path: Path = out / f"{model.name}.json") -> None:
            path.write_text(
                json.dumps({"environment": environment(), "model": path.stem, **entry}, indent=1)
                + "\n"
            )

        path = out / f"{model.name}.json"
        previous = None
        if args.resume and path.exists():
            earlier = json.loads(path.read_text())
            if earlier["sizes"] != asdict(sizes):
                sys.exit(
                    f"--resume: {path} was measured on {earlier['sizes']}, not {asdict(sizes)}"
                )
            previous = {row["recipe"]: row for row in earlier["rows"]}
        run_model(
            model,
            mode,
            sizes,
            strategies,
            budgets,
            recover_for,
            save,
            previous,
            log=lambda line: print(line, flush=True),
        )
    if not (args.smoke or args.no_render):
        from bench.report import render_results

        render_results(out, RESULTS_MD, PLOTS_DIR)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
