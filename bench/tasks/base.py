"""What every benchmark task provides, and the calibration-directory format the mpqc CLI reads.

A task owns its data (made in code, seeded, calibration and evaluation disjoint) and its metric. It
never touches onnxruntime: it is handed a *runner*, a function from one input dict to the model's
outputs, so the metric code is tested with fake runners and the harness decides how sessions are
built.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

Inputs = dict[str, np.ndarray]
Runner = Callable[[Inputs], Sequence[np.ndarray]]


@dataclass(frozen=True)
class TaskSizes:
    """How many samples a task makes; ``quick()`` is the smoke-test scale."""

    n_eval: int
    n_calib: int
    seed: int = 0

    def quick(self) -> TaskSizes:
        return TaskSizes(n_eval=min(self.n_eval, 24), n_calib=min(self.n_calib, 4), seed=self.seed)


@dataclass
class Evaluation:
    """Task metrics plus the per-sample predictions used to compare a quantized model with float."""

    metrics: dict[str, float]
    predictions: list[Any] = field(repr=False)


class Task(ABC):
    """A dataset and its metric for one model."""

    #: the metric that ranks recipes (a key of ``Evaluation.metrics``); higher is better
    primary_metric: str
    #: the model outputs a runner must return, in this order; None means all, in the model's order
    output_names: tuple[str, ...] | None = None

    def __init__(self, sizes: TaskSizes) -> None:
        self.sizes = sizes

    @cached_property
    def calibration_inputs(self) -> list[Inputs]:
        """Model inputs for calibration, one dict per sample (disjoint from evaluation)."""
        return self._make_calibration()

    @cached_property
    def evaluation_set(self) -> tuple[list[Inputs], list[Any]]:
        """Model inputs for evaluation and their labels."""
        return self._make_evaluation()

    def latency_inputs(self, count: int = 8) -> list[Inputs]:
        """A fixed handful of evaluation inputs that latency is timed on."""
        return self.evaluation_set[0][:count]

    def evaluate(self, run: Runner) -> Evaluation:
        """Run every evaluation sample through ``run`` and score the outputs."""
        inputs, labels = self.evaluation_set
        predictions = [self.predict(run(sample)) for sample in inputs]
        return Evaluation(self.score(predictions, labels), predictions)

    @abstractmethod
    def _make_calibration(self) -> list[Inputs]: ...

    @abstractmethod
    def _make_evaluation(self) -> tuple[list[Inputs], list[Any]]: ...

    @abstractmethod
    def predict(self, outputs: Sequence[np.ndarray]) -> Any:
        """Turn one sample's raw model outputs into a prediction (text, class, embedding)."""

    @abstractmethod
    def score(self, predictions: list[Any], labels: list[Any]) -> dict[str, float]:
        """Task metrics of predictions against labels (higher is better for every metric)."""

    @abstractmethod
    def agreement(self, predictions: list[Any], reference: list[Any]) -> dict[str, float]:
        """How closely predictions follow the float model's (``reference``), independent of
        labels."""


def write_calib_dir(task: Task, directory: str | Path) -> Path:
    """Write the task's calibration set as ``DIR/sample_NNNN.npz``, one file per sample.

    This is the format of ``mpqc --calib DIR``: each archive's keys are the model's input names.
    Files are rewritten on every call, and stale samples from a larger earlier set are removed.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("sample_*.npz"):
        stale.unlink()
    for index, sample in enumerate(task.calibration_inputs):
        np.savez(directory / f"sample_{index:04d}.npz", **sample)
    return directory
