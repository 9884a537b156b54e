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
from typing import Any

import numpy as np

__all__ = ["CompileContext"]


@dataclasses.dataclass
class CompileContext:
    """Inputs and services of one compilation."""

    #: Calibration samples (input name -> array), used by calibrate and data-driven analyses.
    calibration: Any = None  # mpqc.passes.lib.data.CalibrationData | None
    #: Held-out samples for verification and exact evaluation; disjoint from ``calibration``.
    held_out: Any = None  # mpqc.passes.lib.data.CalibrationData | None
    #: The float model as the user gave it (serialized), the reference that verify compares against.
    reference: bytes | None = None
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

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
