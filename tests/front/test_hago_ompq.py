"""``mpqc --strategy hago|ompq`` end to end on the embedded digits model, on every bundled spec."""

from __future__ import annotations

import json
import pathlib

import onnx
import pytest

from mpqc import hwspecs
from mpqc.cli import main
from mpqc.core.bits import FLOAT_BITS, Bits

SPECS = hwspecs.names()


def searched(out: pathlib.Path) -> dict:
    """The search's front as the output model records it (``mpqc.pareto``)."""
    metadata = {p.key: p.value for p in onnx.load(out).metadata_props}
    return json.loads(metadata["mpqc.pareto"])


@pytest.mark.parametrize("strategy", ["hago", "ompq"])
def test_half_the_size_on_x86(strategy: str, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "digits.onnx"
    assert (
        main(
            [
                "--hw",
                "x86_avx2",
                "--strategy",
                strategy,
                "--max-size",
                "0.5x",
                "--max-latency",
                "1s",
                "-q",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    front = searched(out)
    assert front["strategy"] == strategy
    assert front["chosen_objectives"]["size"] <= front["constraints"]["size"]
    assert front["metric"] == {"hago": "output", "ompq": "orthogonality"}[strategy]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("strategy", ["hago", "ompq"])
def test_every_bundled_spec(spec: str, strategy: str, tmp_path: pathlib.Path) -> None:
    """Only pairs the chip runs are chosen, and the budget holds, whatever the chip offers."""
    out = tmp_path / "digits.onnx"
    argv = ["--hw", spec, "--strategy", strategy, "--wbits", "8,4,2", "--abits", "8,4"]
    assert main([*argv, "--max-size", "0.6x", "--max-latency", "1s", "-q", "-o", str(out)]) == 0
    front = searched(out)
    chosen = front["points"][front["chosen"]] if front["chosen"] >= 0 else None
    assert front["chosen_objectives"]["size"] <= front["constraints"]["size"]
    chip = hwspecs.load(spec)
    for text in (chosen or front["points"][0])["bits"].values():
        bits = Bits.parse(text, widths=None)
        assert bits == (FLOAT_BITS, FLOAT_BITS) or chip.supports(*bits), (spec, text)
