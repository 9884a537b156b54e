"""Metric code of the benchmark tasks, on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest

from bench.tasks.metrics import (
    char_accuracy,
    ctc_greedy_decode,
    edit_distance,
    mean_cosine,
    mean_reciprocal_rank,
    text_scores,
)


def test_ctc_decode_collapses_repeats_then_drops_blanks():
    assert ctc_greedy_decode([0, 3, 3, 0, 3, 5, 5, 0, 0]) == [3, 3, 5]
    assert ctc_greedy_decode([0, 0, 0]) == []


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [
        ("", "", 0),
        ("abc", "", 3),
        ("kitten", "sitting", 3),
        ("flaw", "lawn", 2),
        ("same", "same", 0),
    ],
)
def test_edit_distance(a, b, distance):
    assert edit_distance(a, b) == distance == edit_distance(b, a)


def test_char_accuracy_is_clipped_and_relative_to_the_reference():
    assert char_accuracy("floor", "floor") == 1.0
    assert char_accuracy("flo0r", "floor") == pytest.approx(0.8)
    assert char_accuracy("a much longer wrong answer", "ab") == 0.0
    assert char_accuracy("", "") == 1.0 and char_accuracy("x", "") == 0.0


def test_text_scores():
    scores = text_scores(["abc", "abd", ""], ["abc", "abc", "xy"])
    assert scores["line_acc"] == pytest.approx(1 / 3)
    assert scores["char_acc"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    with pytest.raises(ValueError):
        text_scores(["a"], ["a", "b"])


def test_mrr_perfect_partial_and_collapsed():
    corpus = np.eye(4)
    assert mean_reciprocal_rank(np.eye(4)[:2], corpus, [0, 1]) == 1.0
    # the query is closest to item 1, its target (item 0) comes second
    query = np.array([[0.6, 0.8, 0.0, 0.0]])
    assert mean_reciprocal_rank(query, corpus, [0]) == pytest.approx(0.5)
    # a model that maps everything to one vector ranks every target last, not first
    assert mean_reciprocal_rank(np.ones((2, 3)), np.ones((5, 3)), [0, 1]) == pytest.approx(0.2)


def test_mean_cosine():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert mean_cosine(a, a * 3) == pytest.approx(1.0)
    assert mean_cosine(a, np.array([[0.0, 1.0], [0.0, 1.0]])) == pytest.approx(0.5)
