"""Text-line recognition tasks for CTC recognizers: PP-OCRv4 (rapidocr) and ddddocr.

Each line is rendered from a random string, preprocessed the way the model's own package does it
(read from the package's code in the wheel), and decoded greedily. Two deliberate differences:
Pillow resizes where rapidocr uses OpenCV (rendered lines are near the target height, so the kernels
barely differ, and the benchmark needs no OpenCV), and one line per batch, so no line is padded to a
longer neighbour's width.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from bench.tasks.base import Inputs, Task, TaskSizes
from bench.tasks.metrics import ctc_greedy_decode, text_scores
from bench.tasks.text import (
    random_code,
    random_line,
    render_captcha,
    render_line,
    split_disjoint,
    unique_strings,
)


class CtcRecognitionTask(Task):
    """Render text, recognize it, score character and exact-line accuracy."""

    primary_metric = "line_acc"

    def __init__(
        self,
        sizes: TaskSizes,
        charset: Sequence[str],
        make_text: Callable[[np.random.Generator], str],
        render: Callable[[str, np.random.Generator], Image.Image] = render_line,
    ) -> None:
        super().__init__(sizes)
        self.charset = list(charset)
        self.make_text = make_text
        self.render = render

    def texts(self) -> tuple[list[str], list[str]]:
        """Calibration and evaluation strings (disjoint)."""
        strings = unique_strings(
            self.make_text, self.sizes.n_calib + self.sizes.n_eval, self.sizes.seed
        )
        return split_disjoint(strings, self.sizes.n_calib)

    def _render(self, texts: list[str], stream: int) -> list[Inputs]:
        rng = np.random.default_rng([self.sizes.seed, stream])
        return [self.preprocess(self.render(text, rng)) for text in texts]

    def _make_calibration(self) -> list[Inputs]:
        return self._render(self.texts()[0], stream=1)

    def _make_evaluation(self) -> tuple[list[Inputs], list[str]]:
        texts = self.texts()[1]
        return self._render(texts, stream=2), texts

    @abstractmethod
    def preprocess(self, image: Image.Image) -> Inputs:
        """One rendered line as the model's input dict, exactly as the model's package prepares
        it."""

    @abstractmethod
    def class_indices(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """Per-timestep class indices of one line."""

    def normalize(self, text: str) -> str:
        """The form in which predictions and labels are compared."""
        return text

    def predict(self, outputs: Sequence[np.ndarray]) -> str:
        decoded = "".join(self.charset[i] for i in ctc_greedy_decode(self.class_indices(outputs)))
        return self.normalize(decoded)

    def score(self, predictions: list[str], labels: list[str]) -> dict[str, float]:
        return text_scores(predictions, [self.normalize(label) for label in labels])

    def agreement(self, predictions: list[str], reference: list[str]) -> dict[str, float]:
        return {
            "same_text_as_float": float(
                np.mean([p == r for p, r in zip(predictions, reference, strict=True)])
            )
        }


class PaddleRecTask(CtcRecognitionTask):
    """PP-OCRv4 recognizer, preprocessed like rapidocr's ``TextRecognizer.resize_norm_img``.

    RGB→BGR is skipped: rendered lines are gray, so both orders are the same image.
    Height 48, width from the aspect ratio, padded with zeros to at least 320 (rapidocr's
    ``rec_img_shape`` [3, 48, 320]), pixels mapped to [-1, 1]. Class 0 is the CTC blank, the
    character dictionary follows, and rapidocr appends a space as the last class.
    """

    height = 48
    min_width = 320

    def __init__(self, sizes: TaskSizes, dictionary: Sequence[str]) -> None:
        super().__init__(sizes, ["<blank>", *dictionary, " "], random_line)

    def normalize(self, text: str) -> str:
        """Spaces at the ends of a line and runs of spaces carry no information for a line crop."""
        return " ".join(text.split())

    def preprocess(self, image: Image.Image) -> Inputs:
        width = min(math.ceil(self.height * image.width / image.height), 10 * self.min_width)
        resized = np.asarray(image.resize((width, self.height), Image.BILINEAR), dtype=np.float32)
        chw = (resized.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
        padded = np.zeros((3, self.height, max(width, self.min_width)), dtype=np.float32)
        padded[:, :, :width] = chw
        return {"x": padded[np.newaxis]}

    def class_indices(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        return np.asarray(outputs[0])[0].argmax(axis=-1)


class DdddocrTask(CtcRecognitionTask):
    """ddddocr's captcha recognizer, preprocessed like ``OCREngine._preprocess_image``.

    Height 64 with the width from the aspect ratio (Lanczos), then grayscale, then [0, 1]. The model
    returns class scores ``[T, 1, classes]`` (its declared output shape ``[1, T]`` is wrong); index
    0 is the blank. Text is a captcha: 4–6 letters and digits, each character tilted, colored and
    offset, over noise lines and dots; compared case-insensitively.
    """

    height = 64

    def __init__(self, sizes: TaskSizes, charset: Sequence[str]) -> None:
        super().__init__(sizes, charset, random_code, render_captcha)

    def normalize(self, text: str) -> str:
        """Captchas are read case-insensitively; ddddocr's model mostly answers in lower case."""
        return text.lower()

    def preprocess(self, image: Image.Image) -> Inputs:
        width = int(image.width * (self.height / image.height))
        gray = image.resize((width, self.height), Image.LANCZOS).convert("L")
        return {"input1": (np.asarray(gray, dtype=np.float32) / 255.0)[np.newaxis, np.newaxis]}

    def class_indices(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        scores = np.asarray(outputs[0])
        return scores.reshape(-1, scores.shape[-1]).argmax(axis=-1)
