"""``python -m bench.ranges MODEL...``: the per-activation choice of the range estimator
(``--calib-method auto``) and 8-bit GPTQ/bias correction against the minmax default
(RESULTS.md §7f).

Per model, compiled from the same calibration data and scored on the task's evaluation set:
uniform w8a8 with minmax ranges, with ``auto`` ranges, and with ``recover`` at 8 bits
(``recover{max_bits=8}``, which the default pipeline does not run on 8-bit layers); then the
default pipeline (no budget) with minmax and with ``auto`` ranges. The wall time is the whole
compilation's; calibrate's own is given too, as the choice runs inside it.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time
from typing import Any

import mpqc
from bench.recover import real_case
from mpqc import ir as mir

#: label -> CompileOptions fields.
VARIANTS: dict[str, dict[str, Any]] = {
    "w8a8 minmax": {"uniform": "w8a8"},
    "w8a8 auto": {"uniform": "w8a8", "calibrate_method": "auto"},
    "w8a8 recover8": {
        "pipeline": "canonicalize,calibrate,recover{uniform=w8a8,max_bits=8},"
        "lower-qdq{uniform=w8a8},verify"
    },
    "default minmax": {},
    "default auto": {"calibrate_method": "auto"},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="bench model names (bench/models.py)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--n-eval", type=int, default=None, help="evaluation samples")
    parser.add_argument("--json", type=pathlib.Path, help="write the rows here")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mpqc-bench-ranges-") as scratch:
        for name in args.models:
            case = real_case(name, args.n_eval, "0.5x")
            print(f"[{name}] float {case.metric} {case.score(pathlib.Path(case.model)):.4f}")
            for label in args.variants:
                start = time.perf_counter()
                result = mpqc.compile(
                    case.model,
                    mpqc.CompileOptions(
                        hw="generic", calibration=case.calibration, **VARIANTS[label]
                    ),
                )
                seconds = time.perf_counter() - start
                path = mir.save(result.ir_model, pathlib.Path(scratch) / f"{name}.onnx")
                score = case.score(path)
                calibrate = dict(result.timing).get("calibrate", 0.0)
                kept = {}
                for entry in (result.report.get("calibrate") or {}).get("compared", {}).values():
                    kept[entry["method"]] = kept.get(entry["method"], 0) + 1
                row = {
                    "model": name,
                    "variant": label,
                    case.metric: score,
                    "seconds": seconds,
                    "calibrate_s": calibrate,
                    "bytes": path.stat().st_size,
                    "kept": kept,
                }
                rows.append(row)
                print(
                    f"[{name}] {label:15s} {case.metric} {score:.4f}  {seconds:6.1f} s "
                    f"(calibrate {calibrate:.1f} s)  {row['bytes']} B  kept {kept}",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
