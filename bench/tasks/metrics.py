"""Task metrics, pure numpy/python so they are tested without a model.

Text recognizers are scored like PP-OCR's own evaluation: greedy CTC decoding, then character
accuracy (1 − edit distance / reference length, clipped at 0) and exact-line accuracy. Retrieval is
scored by mean reciprocal rank, embeddings by cosine similarity to the float model's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ctc_greedy_decode(indices: Sequence[int], blank: int = 0) -> list[int]:
    """Collapse repeated class indices, then drop blanks (best-path CTC decoding)."""
    decoded: list[int] = []
    previous = None
    for index in indices:
        index = int(index)
        if index != previous and index != blank:
            decoded.append(index)
        previous = index
    return decoded


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        diagonal, row[0] = row[0], i
        for j, cb in enumerate(b, start=1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (ca != cb))
    return row[-1]


def char_accuracy(prediction: str, reference: str) -> float:
    """1 − edit distance / len(reference), clipped to [0, 1]; an empty reference scores exact
    match."""
    if not reference:
        return float(prediction == reference)
    return max(0.0, 1.0 - edit_distance(prediction, reference) / len(reference))


def text_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean character accuracy and exact-line accuracy over a set of lines."""
    if len(predictions) != len(references) or not references:
        raise ValueError("need one prediction per reference and at least one line")
    chars = [char_accuracy(p, r) for p, r in zip(predictions, references, strict=True)]
    lines = [p == r for p, r in zip(predictions, references, strict=True)]
    return {"char_acc": float(np.mean(chars)), "line_acc": float(np.mean(lines))}


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


def mean_reciprocal_rank(queries: np.ndarray, corpus: np.ndarray, targets: Sequence[int]) -> float:
    """MRR of ``targets[i]`` among ``corpus`` rows ranked by cosine similarity to ``queries[i]``.

    Ties count against the query (the target ranks after every item scoring the same), so a
    collapsed model that maps everything to one vector scores near 1/len(corpus), not 1.
    """
    similarity = l2_normalize(queries) @ l2_normalize(corpus).T
    target_scores = similarity[np.arange(len(targets)), np.asarray(targets)]
    ranks = (similarity >= target_scores[:, None]).sum(axis=1)
    return float(np.mean(1.0 / ranks))


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean row-wise cosine similarity of two equally shaped embedding matrices."""
    return float(np.mean(np.sum(l2_normalize(a) * l2_normalize(b), axis=-1)))
