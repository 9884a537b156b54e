"""``python -m bench.suite``: the real-model benchmark of issues #8 and #15 in one command.

Per model, in one run on the same data: float; the careful onnxruntime recipe (``quantize_static``
QDQ u8s8 per-channel MinMax on Conv, ConvTranspose, Gemm and MatMul, ``reduce_range`` on CPUs
without VNNI), ``quantize_dynamic``, and in a full run onnxruntime's other recipes (u8s8 and s8s8 on
every op, 4-bit ``MatMulNBits`` where the model has MatMuls); NNCF 3.x preset MIXED on PP-OCRv4 (in
its own virtual environment, ``bench.nncf_peer``); mpqc ``--uniform w8a8``; mpqc's default pipeline
(``mpqc FLOAT --hw SPEC --max-size B --calib DIR``, exactly what a user runs) at B = 1.0x and 0.5x
of the careful recipe's file; and, where asked for, every search strategy under the same budgets.
Each row: task metric, agreement with float, MB, latency (1-thread CPU time and 2-thread wall
clock; paired and alternated with float, and at 1 thread with the careful recipe), wall time, the
cost model's predicted latency, and which layers mpqc kept above the cheapest bits (from ``mpqc
--report-json``). The machine (CPU model, VNNI or not, onnxruntime version) is printed and recorded,
and mpqc compiles for the bundled spec of this CPU unless ``--hw`` says otherwise.

The strategy rows run in two steps that give the same model as one ``mpqc`` call: the analysis
(``canonicalize,calibrate,sensitivity-output,sensitivity-entropy,...,cost``) once per model, saved
with its annotations; then ``mpqc ANALYSED --pipeline 'search{...},[recover,]lower-qdq,verify'`` per
recipe, whose ``quantize_s`` adds the analysis time. Without strategy rows the analysis is only
``canonicalize,calibrate,cost``, for the predicted-latency column.

Results go to ``bench/results/<model>.json`` (one file per model, so models can be run apart);
``bench/RESULTS.md`` §2 and ``bench/plots/*.png`` are then regenerated from every JSON present.
``--smoke`` is the CI version: the orientation model at quick scale, the careful recipe, mpqc w8a8,
the default pipeline and one ILP search at 0.5x, written under the cache, RESULTS.md untouched.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx

from bench import machine, nncf_peer
from bench import models as registry
from bench.baselines import CAREFUL, FLOAT, RECIPES, Recipe, RecipeError
from bench.cache import cache_dir
from bench.mpqc_rows import Analysis, analyse, cli_recipe, explain_row
from bench.run import Bench, environment
from bench.tasks.base import TaskSizes
from mpqc.hwspecs.machine import base_for_machine
from mpqc.passes.pipelines import search_step

STRATEGIES = ("ilp", "greedy", "eagl", "nsga2", "mohaq", "nemo", "haq", "hago", "ompq")
#: Fractions of the careful recipe's file size (issue 15: at its size and at half of it).
BUDGETS = (1.0, 0.5)
#: onnxruntime recipes a full run gives every model; MatMulNBits joins where the model has MatMuls.
ORT_RECIPES = (CAREFUL, "ort-dynamic", "ort-u8s8", "ort-s8s8")
#: The recipe whose file size the budgets are fractions of, and whose latency mpqc's is paired with.
SIZE_ANCHOR = CAREFUL
#: Peer tools: the models each runs on, and what installs it (NNCF: the issue's PP-OCRv4 row).
PEERS = {nncf_peer.NAME: (("ppocr-rec",), nncf_peer.prepare)}
#: The analysis the search recipes share: the default pipeline up to the search (every metric a
#: strategy reads: EAGL its entropy scores, OMPQ its orthogonality, the others output perturbation).
ANALYSIS = (
    "canonicalize,calibrate,sensitivity-output{{samples={samples}}},sensitivity-entropy,"
    "sensitivity-orthogonality,cost"
)
#: Without strategy rows: just the cost tables the predicted-latency column reads.
COST_ONLY = "canonicalize,calibrate,cost"
#: Strategies whose method names its own damage score; the rest read output perturbation.
METRICS = {"eagl": "entropy", "ompq": "orthogonality"}
RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
PLOTS_DIR = Path(__file__).resolve().parent / "plots"


def default_row(factor: float) -> str:
    """The name of mpqc's default-pipeline row at ``factor`` x the careful recipe's size."""
    return f"mpqc@{factor:g}x"


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
    #: run the peer tools (NNCF) on the models they are listed for
    peers: bool = True
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
        ort_recipes=(CAREFUL, "ort-dynamic"),
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
        ort_recipes=(CAREFUL,),
        matmul_nbits=False,
        peers=False,
        timeout_s=240.0,
    ),
}


def recover_available() -> bool:
    """Whether the ``recover`` pass is registered (it is built in parallel with this suite)."""
    from mpqc import passes

    return "recover" in passes.names()


def has_matmul(model: Path) -> bool:
    """Whether the graph has a MatMul (4-bit ``MatMulNBits`` has nothing to convert otherwise)."""
    graph = onnx.load(str(model), load_external_data=False).graph
    return any(node.op_type == "MatMul" for node in graph.node)


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


class ModelRun:
    """One model's rows as they are measured; the results entry is saved after every row, so a
    stopped run keeps what it measured. ``previous`` holds rows of an earlier run on the same data
    by recipe name: those that succeeded are kept instead of measured again (``--resume``)."""

    def __init__(
        self,
        bench: Bench,
        mode: Mode,
        hw: str,
        save: Callable[[dict[str, Any]], None],
        previous: dict[str, dict[str, Any]] | None,
        log: Callable[[str], None],
    ) -> None:
        self.bench, self.mode, self.hw, self.save, self.log = bench, mode, hw, save, log
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.analysis: Analysis | None = None
        self.analysis_pipeline = ""
        self.analysis_error = ""
        self.reusable = {name: row for name, row in (previous or {}).items() if "error" not in row}
        self.main_commit = machine.git_commit().get("main_commit", "")

    def entry(self) -> dict[str, Any]:
        table = self.bench.table(self.rows)
        table.update(
            mode=self.mode.name,
            hw=self.hw,
            analysis_s=self.analysis.seconds if self.analysis else None,
            notes=self.notes,
            analysis_pipeline=self.analysis_pipeline,
            repeats=self.bench.repeats,
        )
        return table

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        """Record ``row`` (stamped with the main commit it was measured on) and save."""
        row.setdefault("main_commit", self.main_commit)
        self.rows.append(row)
        self.save(self.entry())
        return row

    def measure(self, recipe: Recipe) -> dict[str, Any]:
        if recipe.name in self.reusable:
            self.log(f"[{self.bench.model.name}] {recipe.name}: kept from the earlier run")
            return self.reusable[recipe.name]
        return self.bench.run(recipe, self.log)

    def row(self, name: str) -> dict[str, Any]:
        return next(row for row in self.rows if row["recipe"] == name)

    def onnxruntime(self) -> None:
        """The careful recipe first (every later row's 1-thread latency is paired with it), then
        the others."""
        careful = self.measure(RECIPES[CAREFUL])
        path = self.bench.workdir / f"{CAREFUL}.onnx"
        if "error" not in careful and path.exists():
            careful["latency_vs_careful_1t"] = 1.0
            self.bench.baseline = path
            # float was timed against float; the careful row's pairing with float gives its ratio
            self.rows[0]["latency_vs_careful_1t"] = 1.0 / careful["latency_vs_float_1t"]
        self.add(careful)
        names = [name for name in self.mode.ort_recipes if name != CAREFUL]
        if self.mode.matmul_nbits and has_matmul(self.bench.float_model):
            names.append("ort-matmul-nbits4")
        elif self.mode.matmul_nbits:
            self.notes.append("ort-matmul-nbits4 not run: the model has no MatMul")
        for name in names:
            self.add(self.measure(RECIPES[name]))

    def peers(self) -> None:
        """The peer tools listed for this model, each prepared (installed) before it is timed."""
        for name, (models, prepare) in PEERS.items():
            if self.bench.model.name not in models:
                continue
            if name not in self.reusable:
                try:
                    self.notes.append(f"{name}: {prepare()}")
                except RecipeError as exc:
                    self.add(
                        {
                            "recipe": name,
                            "description": RECIPES[name].description,
                            "error": str(exc),
                        }
                    )
                    continue
            self.add(self.measure(RECIPES[name]))

    def analyse(self, strategies: Sequence[str]) -> None:
        self.analysis_pipeline = (
            ANALYSIS.format(samples=self.mode.sens_samples) if strategies else COST_ONLY
        )
        try:
            self.analysis = analyse(self.bench, self.analysis_pipeline, self.hw)
        except Exception as exc:  # noqa: BLE001 - the failure becomes every search row's reason
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self.analysis_error = f"analysis failed: {type(exc).__name__}: {first}"
            return
        self.log(f"[{self.bench.model.name}] analysis {self.analysis.seconds:.1f} s")
        self.rows[0]["predicted"] = self.analysis.predicted({})  # float: every layer float

    def mpqc_cli(self, name: str, model: Path | None, arguments: list[str]) -> dict[str, Any]:
        """Measure ``mpqc [MODEL] ARGUMENTS`` and add what its report says."""
        report = self.bench.workdir / f"{name}.report.json"
        recipe = cli_recipe(
            name, model, arguments, report, self.mode.timeout_s, f"mpqc {shlex.join(arguments)}"
        )
        row = self.measure(recipe)
        # a kept row too: its report is still on disk, the analysis may be new
        explain_row(row, report, self.analysis)
        return row

    def mpqc(
        self, strategies: Sequence[str], budgets: Sequence[float], recover_for: Sequence[str]
    ) -> None:
        """mpqc uniform w8a8; the default pipeline at each budget; each strategy at each budget."""
        self.add(self.mpqc_cli("mpqc-w8a8", None, ["--hw", self.hw, "--uniform", "w8a8"]))
        anchor = self.row(SIZE_ANCHOR)
        for factor in budgets:
            if "error" in anchor:
                self.add({"recipe": default_row(factor), "error": f"no budget: {CAREFUL} failed"})
                continue
            budget_mb = anchor["size_mb"] * factor
            row = self.mpqc_cli(
                default_row(factor), None, ["--hw", self.hw, "--max-size", f"{budget_mb:.4f}MB"]
            )
            self.add(row | {"budget_factor": factor, "budget_mb": budget_mb})
        if not recover_available():
            recover_for = ()
            self.notes.append("+recover rows not run: the `recover` pass is not registered")
        for strategy in strategies:
            for factor in budgets:
                for recover in (False, True) if strategy in recover_for else (False,):
                    self.search_row(strategy, factor, recover, anchor)

    def search_row(
        self, strategy: str, factor: float, recover: bool, anchor: dict[str, Any]
    ) -> None:
        name = f"mpqc-{strategy}@{factor:g}x" + ("+recover" if recover else "")
        if self.analysis is None or "error" in anchor:
            reason = self.analysis_error or f"no budget: {SIZE_ANCHOR} failed"
            self.add({"recipe": name, "description": "", "error": reason})
            return
        budget_mb = anchor["size_mb"] * factor
        pipeline = search_pipeline(strategy, recover, self.mode)
        arguments = ["--hw", self.hw, "--max-size", f"{budget_mb:.4f}MB", "--pipeline", pipeline]
        kept = name in self.reusable
        row = self.mpqc_cli(name, self.analysis.path, arguments)
        if not kept:
            row.update(
                strategy=strategy, budget_factor=factor, recover=recover, budget_mb=budget_mb
            )
            if "quantize_s" in row:
                row["search_s"] = row["quantize_s"]
                row["quantize_s"] += self.analysis.seconds
        self.add(row)


def run_model(
    model: registry.BenchModel,
    mode: Mode,
    hw: str,
    sizes: TaskSizes,
    strategies: Sequence[str],
    budgets: Sequence[float],
    recover_for: Sequence[str],
    save: Callable[[dict[str, Any]], None],
    previous: dict[str, dict[str, Any]] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every recipe of ``mode`` on one model, compiled for spec ``hw``; ``recover_for`` names the
    strategies that also run +recover."""
    bench = Bench.prepare(model, sizes, mode.repeats, runs=f"suite-{mode.name}")
    run = ModelRun(bench, mode, hw, save, previous, log)
    run.add(run.measure(FLOAT))
    run.onnxruntime()
    if mode.peers:
        run.peers()
    run.analyse(strategies)
    run.mpqc(strategies, budgets, recover_for)
    return run.entry()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.suite", description=__doc__.split("\n\n")[0]
    )
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument(
        "--quick", action="store_true", help="small data sets, 3 latency repeats, short searches"
    )
    scale.add_argument(
        "--smoke",
        action="store_true",
        help="the CI run: orientation, the careful recipe, w8a8, default pipeline, one ILP search",
    )
    parser.add_argument("--models", help=f"comma-separated subset of {','.join(registry.MODELS)}")
    parser.add_argument(
        "--strategies",
        help=f"comma-separated subset of {','.join(STRATEGIES)}, or 'none' (default rows only)",
    )
    parser.add_argument(
        "--ort", help=f"onnxruntime recipes besides {CAREFUL} (comma-separated, or 'none')"
    )
    parser.add_argument("--budgets", help="fractions of the careful recipe's size, e.g. 1,0.5")
    parser.add_argument(
        "--hw", help="mpqc's spec (default: the bundled spec of this CPU, as mpqc-hw profile picks)"
    )
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
    parser.add_argument(
        "--timeout", type=float, help="seconds one mpqc row may take (default: the mode's)"
    )
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


def _names(text: str | None, default: Sequence[str]) -> list[str]:
    if text is None:
        return list(default)
    return [] if text == "none" else text.split(",")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.repeats:
        mode = replace(mode, repeats=args.repeats)
    if args.timeout:
        mode = replace(mode, timeout_s=args.timeout)
    if args.ort is not None:
        mode = replace(mode, ort_recipes=(CAREFUL, *_names(args.ort, ())))
    unknown = sorted(set(mode.ort_recipes) - set(RECIPES))
    if unknown:
        sys.exit(f"unknown onnxruntime recipes {unknown}; choose from {', '.join(RECIPES)}")
    try:
        chosen = [
            registry.get(name) for name in (args.models.split(",") if args.models else mode.models)
        ]
    except registry.UnknownModelError as exc:
        sys.exit(str(exc.args[0]))
    strategies = _names(args.strategies, mode.strategies)
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        sys.exit(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    budgets = [float(b) for b in args.budgets.split(",")] if args.budgets else list(mode.budgets)
    hw = args.hw or base_for_machine()
    out = args.out or (cache_dir() / "smoke" if args.smoke else RESULTS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    recover_for = _names(args.recover_for, strategies)
    print(f"machine: {machine.summary(machine.describe())}; mpqc spec {hw}", flush=True)
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
            hw,
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
