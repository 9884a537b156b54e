"""What passes share: the compilation's inputs and services, passed explicitly.

A ``CompileContext`` is created once per compilation and handed to every pass at construction.
Nothing here is global, so two compilations (or two tests) in one process never see each other's
calibration data, spec or seed. Fields are plain data or services with narrow interfaces; passes
read what they need and ignore the rest.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import pathlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

__all__ = ["CompileContext", "StepReporter", "Steps"]


class StepReporter(Protocol):
    """Shows a pass's steps (the ``Progress`` instrument): what is counted, how many so far."""

    def start_steps(self, what: str, total: int | None) -> None: ...

    def advance(self, count: int) -> None: ...


class Steps:
    """A pass's counter of its steps (samples, layers, evaluations): ``advance()`` after each.

    Passes count through the context and never know whether anyone watches: without a reporter
    a step costs one attribute test.
    """

    def __init__(self, reporter: StepReporter | None, what: str, total: int | None) -> None:
        self._reporter = reporter
        if reporter is not None:
            reporter.start_steps(what, total)

    def advance(self, count: int = 1) -> None:
        if self._reporter is not None:
            self._reporter.advance(count)


@dataclasses.dataclass
class CompileContext:
    """Inputs and services of one compilation."""

    #: Calibration samples (input name -> array), used by calibrate and data-driven analyses.
    calibration: Any = None  # mpqc.passes.lib.data.CalibrationData | None
    #: Held-out samples for verification and exact evaluation; disjoint from ``calibration``.
    held_out: Any = None  # mpqc.passes.lib.data.CalibrationData | None
    #: The float model as the user gave it (serialized), the reference that verify compares against.
    reference: bytes | None = None
    #: Where the reference's external tensors are (a model past the protobuf limit stays external).
    reference_folder: str | None = None
    #: The target's hardware spec (mpqc.hwspecs.HardwareSpec) or None before one is chosen.
    hw: Any = None
    #: User weight / activation bit-width candidates (intersected with the spec's).
    wbits: tuple[int, ...] | None = None
    abits: tuple[int, ...] | None = None
    #: Constraints on totals, e.g. {"size": 3e6, "latency": 2e-3}; ratios already resolved.
    constraints: Mapping[str, float] = dataclasses.field(default_factory=dict)
    #: A task metric: callable(model_path_or_proto) -> float, higher is better.
    eval_fn: Callable[[Any], float] | None = None
    #: Static sizes for symbolic dims by dim name ({"N": 1}) or whole input shapes by input name
    #: ({"x": (1, 3, 48, 320)}).
    shapes: Mapping[str, int | tuple[int, ...]] = dataclasses.field(default_factory=dict)
    seed: int = 0
    #: Runs expensive evaluations; None means inline in this process.
    executor: concurrent.futures.Executor | None = None
    cache_dir: pathlib.Path | None = None
    #: Where passes write notes for the report (layers left float and why, warnings).
    notes: list[str] = dataclasses.field(default_factory=list)

    def rng(self, salt: str) -> np.random.Generator:
        """A generator seeded from the compilation seed and a per-use salt: uses don't interfere."""
        digest = int.from_bytes(hashlib.sha256(salt.encode()).digest()[:8], "little")
        return np.random.default_rng([self.seed, digest])

    def __post_init__(self) -> None:
        # Accept the data as CompileOptions does (a folder, an onnxruntime CalibrationDataReader,
        # input dicts): the passes read CalibrationData.
        from mpqc.passes.lib.data import load_calibration

        for field in ("calibration", "held_out"):
            value = getattr(self, field)
            if value is not None:
                setattr(self, field, load_calibration(value))

    #: Shows the passes' steps as they run (the ``Progress`` instrument); None: nobody watches.
    progress: StepReporter | None = None

    def steps(self, what: str, total: int | None = None) -> Steps:
        """Count this pass's ``what`` (of ``total``, when known) for whoever shows progress."""
        return Steps(self.progress, what, total)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
