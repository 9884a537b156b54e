"""Data generation and scoring of every task, with fake runners and encoders: no model, no
download."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from bench.tasks.base import TaskSizes, write_calib_dir
from bench.tasks.ocr import DdddocrTask, PaddleRecTask
from bench.tasks.orientation import OrientationTask
from bench.tasks.paraphrase import ParaphraseTask, random_triple
from bench.tasks.text import (
    ALNUM,
    random_code,
    random_line,
    render_captcha,
    render_line,
    split_disjoint,
    unique_strings,
)

CHARS = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:,"))


def digest(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


def test_unique_strings_are_distinct_deterministic_and_split_disjoint():
    strings = unique_strings(random_line, 50, seed=3)
    assert len(set(strings)) == 50
    assert strings == unique_strings(random_line, 50, seed=3)
    assert strings != unique_strings(random_line, 50, seed=4)
    calib, evaluation = split_disjoint(strings, 10)
    assert len(calib) == 10 and len(evaluation) == 40 and not set(calib) & set(evaluation)


def test_unique_strings_refuses_impossible_counts():
    with pytest.raises(ValueError, match="distinct"):
        unique_strings(lambda rng: "same", 2, seed=0)


def test_random_code_uses_unambiguous_characters():
    rng = np.random.default_rng(0)
    codes = [random_code(rng) for _ in range(100)]
    assert all(4 <= len(code) <= 6 and set(code) <= set(ALNUM) for code in codes)


def test_render_line_is_deterministic_and_dark_on_light():
    first = np.asarray(render_line("Invoice 2024-03-17", np.random.default_rng(1)))
    again = np.asarray(render_line("Invoice 2024-03-17", np.random.default_rng(1)))
    assert first.shape[2] == 3 and first.shape[1] > first.shape[0]
    assert np.array_equal(first, again)
    assert first.min() < 80 and np.median(first) > 200


def test_render_captcha_is_deterministic():
    first = np.asarray(render_captcha("aB3xY7", np.random.default_rng(3)))
    assert np.array_equal(first, np.asarray(render_captcha("aB3xY7", np.random.default_rng(3))))
    assert first.ndim == 3 and first.shape[1] > first.shape[0]


def one_hot_path(text: str, charset: list[str]) -> np.ndarray:
    """A CTC path that spells ``text``: every character followed by a blank."""
    indices = [i for char in text for i in (charset.index(char), 0)]
    return np.eye(len(charset), dtype=np.float32)[[0, *indices]]


def test_paddle_task_preprocesses_like_rapidocr_and_scores_an_oracle_perfectly():
    task = PaddleRecTask(TaskSizes(n_eval=6, n_calib=2, seed=0), CHARS)
    inputs, labels = task.evaluation_set
    assert len(inputs) == 6 and len(task.calibration_inputs) == 2
    for sample in inputs:
        x = sample["x"]
        assert x.dtype == np.float32 and x.shape[:3] == (1, 3, 48) and x.shape[3] >= 320
        assert -1.0 <= x.min() and x.max() <= 1.0
    calib_texts, eval_texts = task.texts()
    assert not set(calib_texts) & set(eval_texts) and eval_texts == labels
    by_input = {digest(sample["x"]): label for sample, label in zip(inputs, labels, strict=True)}
    oracle = task.evaluate(
        lambda s: [one_hot_path(by_input[digest(s["x"])], task.charset)[np.newaxis]]
    )
    assert oracle.metrics == {"char_acc": 1.0, "line_acc": 1.0}
    blind = task.evaluate(lambda s: [np.eye(len(task.charset))[[0, 0]][np.newaxis]])
    assert blind.metrics == {"char_acc": 0.0, "line_acc": 0.0}
    assert task.agreement(oracle.predictions, oracle.predictions) == {"same_text_as_float": 1.0}
    assert task.agreement(blind.predictions, oracle.predictions) == {"same_text_as_float": 0.0}


def test_paddle_task_ignores_spaces_at_line_ends():
    task = PaddleRecTask(TaskSizes(n_eval=1, n_calib=1), CHARS)
    spelled = one_hot_path("  ab", task.charset)
    assert task.predict([spelled[np.newaxis]]) == "ab"


def test_same_seed_same_data_byte_for_byte():
    first = PaddleRecTask(TaskSizes(4, 2, seed=5), CHARS)
    second = PaddleRecTask(TaskSizes(4, 2, seed=5), CHARS)
    assert [digest(s["x"]) for s in first.evaluation_set[0]] == [
        digest(s["x"]) for s in second.evaluation_set[0]
    ]
    assert [digest(s["x"]) for s in first.calibration_inputs] == [
        digest(s["x"]) for s in second.calibration_inputs
    ]


def test_ddddocr_task_is_case_insensitive_and_gray():
    charset = ["", *dict.fromkeys(ALNUM + ALNUM.upper())]
    task = DdddocrTask(TaskSizes(n_eval=5, n_calib=1), charset)
    inputs, labels = task.evaluation_set
    assert all(
        s["input1"].shape[:3] == (1, 1, 64) and 0 <= s["input1"].min() <= s["input1"].max() <= 1
        for s in inputs
    )
    by_input = {digest(s["input1"]): label for s, label in zip(inputs, labels, strict=True)}
    # the model answers [T, 1, classes]; an oracle that answers in upper case is still right
    upper = task.evaluate(
        lambda s: [one_hot_path(by_input[digest(s["input1"])].upper(), charset)[:, None]]
    )
    assert upper.metrics == {"char_acc": 1.0, "line_acc": 1.0}


def test_orientation_task_shapes_labels_and_scores():
    task = OrientationTask(TaskSizes(n_eval=8, n_calib=1), ["0", "90", "180", "270"])
    inputs, labels = task.evaluation_set
    assert all(s["x"].shape == (1, 3, 224, 224) and s["x"].dtype == np.float32 for s in inputs)
    assert sorted(set(labels)) == [0, 90, 180, 270]
    always_upright = task.evaluate(lambda s: [np.array([[0.7, 0.1, 0.1, 0.1]], dtype=np.float32)])
    assert always_upright.metrics["accuracy"] == pytest.approx(labels.count(0) / len(labels))
    expected_prob = np.mean([0.7 if label == 0 else 0.1 for label in labels])
    assert always_upright.metrics["prob_true"] == pytest.approx(expected_prob)
    with pytest.raises(ValueError, match="not classes"):
        OrientationTask(TaskSizes(1, 1), ["0", "180"], angles=(0, 90))


def test_paraphrase_triples_and_oracle_retrieval():
    sentences: list[str] = []

    def encode(text: str) -> dict[str, np.ndarray]:
        if text not in sentences:
            sentences.append(text)
        ids = np.array([[sentences.index(text)]], dtype=np.int64)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids)}

    task = ParaphraseTask(TaskSizes(n_eval=20, n_calib=3), encode, output_name="emb")
    assert task.output_names == ("emb",)
    calib, evaluation = task.triples()
    assert len(calib) == 3 and len(evaluation) == 20
    assert not {t[0] for t in calib} & {t[0] for t in evaluation}
    assert len(task.calibration_inputs) == 6
    n = len(evaluation)
    text_of = task.sentences()

    def oracle(sample):
        text = sentences[int(sample["input_ids"][0, 0])]
        index = text_of.index(text)
        item = (
            index % n if index < 2 * n else n + index
        )  # a query and its paraphrase share a direction
        return [np.eye(4 * n)[item][np.newaxis]]

    result = task.evaluate(oracle)
    assert result.metrics == {"mrr": 1.0}
    assert task.agreement(result.predictions, result.predictions)[
        "cosine_to_float"
    ] == pytest.approx(1.0)


def test_random_triple_negative_shares_subject_but_not_the_event():
    query, paraphrase, negative = random_triple(np.random.default_rng(2))
    assert query != negative and query != paraphrase
    assert query.split()[:2] == negative.split()[:2]


def test_write_calib_dir_writes_one_npz_per_sample_keyed_by_input_name(tmp_path):
    task = PaddleRecTask(TaskSizes(n_eval=1, n_calib=3), CHARS)
    (tmp_path / "sample_9999.npz").write_bytes(b"stale")
    folder = write_calib_dir(task, tmp_path)
    files = sorted(folder.glob("*.npz"))
    assert [f.name for f in files] == ["sample_0000.npz", "sample_0001.npz", "sample_0002.npz"]
    with np.load(files[1]) as archive:
        assert archive.files == ["x"]
        assert np.array_equal(archive["x"], task.calibration_inputs[1]["x"])
