"""Paraphrase retrieval for sentence embedders (paraphrase-MiniLM-L3-v2).

Each item is a triple made from slot tables: a query sentence, its paraphrase (synonyms in every
slot, often turned passive) and a hard negative (same subject and time, another verb and object, so
it shares half its words with the query). The corpus is every paraphrase plus every hard negative; a
query must rank its own paraphrase first. Scored by MRR, plus the mean cosine between the quantized
and the float model's embeddings of every sentence (the fidelity signal that moves before rankings
flip). Every sentence is embedded alone (batch 1, no padding), as a serving system would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from bench.tasks.base import Inputs, Task, TaskSizes
from bench.tasks.metrics import mean_cosine, mean_reciprocal_rank

Encoder = Callable[[str], Inputs]

SUBJECTS = (
    ("the doctor", "the physician"),
    ("the child", "the kid"),
    ("my friend", "my buddy"),
    ("the teacher", "the instructor"),
    ("the company", "the firm"),
    ("the old man", "the elderly man"),
    ("the students", "the pupils"),
    ("the manager", "the boss"),
    ("the police", "the officers"),
    ("my neighbour", "the man next door"),
    ("the lawyer", "the attorney"),
    ("the couple", "the pair"),
)
# (simple past, synonym in simple past, synonym as past participle)
VERBS = (
    ("bought", "purchased", "purchased"),
    ("fixed", "repaired", "repaired"),
    ("found", "discovered", "discovered"),
    ("cleaned", "washed", "washed"),
    ("built", "constructed", "constructed"),
    ("closed", "shut", "shut"),
    ("sold", "got rid of", "gotten rid of"),
    ("painted", "coloured", "coloured"),
    ("lost", "misplaced", "misplaced"),
    ("checked", "inspected", "inspected"),
    ("borrowed", "took on loan", "taken on loan"),
    ("destroyed", "wrecked", "wrecked"),
)
OBJECTS = (
    ("the car", "the automobile"),
    ("the house", "the home"),
    ("a big box", "a large box"),
    ("the shop", "the store"),
    ("the film", "the movie"),
    ("the bicycle", "the bike"),
    ("the photograph", "the picture"),
    ("the gift", "the present"),
    ("the road", "the street"),
    ("the boat", "the ship"),
    ("the sofa", "the couch"),
    ("the letter", "the message"),
)
TIMES = (
    ("yesterday", "the day before"),
    ("last week", "the previous week"),
    ("this morning", "earlier today"),
    ("in the evening", "at night"),
    ("last year", "a year ago"),
    ("after lunch", "in the afternoon"),
    ("on monday", "at the start of the week"),
    ("quickly", "in a hurry"),
)


def random_triple(rng: np.random.Generator) -> tuple[str, str, str]:
    """(query, paraphrase, hard negative), drawn from the slot tables."""
    subject = SUBJECTS[int(rng.integers(len(SUBJECTS)))]
    verb_index, object_index = int(rng.integers(len(VERBS))), int(rng.integers(len(OBJECTS)))
    verb, thing = VERBS[verb_index], OBJECTS[object_index]
    time = TIMES[int(rng.integers(len(TIMES)))]
    query = f"{subject[0]} {verb[0]} {thing[0]} {time[0]}."
    if rng.random() < 0.5:
        paraphrase = f"{thing[1]} was {verb[2]} by {subject[1]} {time[1]}."
    else:
        paraphrase = f"{subject[1]} {verb[1]} {thing[1]} {time[1]}."
    other_verb = VERBS[(verb_index + 1 + int(rng.integers(len(VERBS) - 1))) % len(VERBS)]
    other_thing = OBJECTS[(object_index + 1 + int(rng.integers(len(OBJECTS) - 1))) % len(OBJECTS)]
    negative = f"{subject[0]} {other_verb[0]} {other_thing[0]} {time[0]}."
    return query.capitalize(), paraphrase.capitalize(), negative.capitalize()


class ParaphraseTask(Task):
    """Query → paraphrase retrieval among paraphrases and hard negatives."""

    primary_metric = "mrr"

    def __init__(self, sizes: TaskSizes, encode: Encoder, output_name: str) -> None:
        super().__init__(sizes)
        self.encode = encode
        self.output_names = (output_name,)

    def triples(self) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
        """Calibration and evaluation triples; queries are unique, so the sets are disjoint."""
        wanted = self.sizes.n_calib + self.sizes.n_eval
        if wanted > len(SUBJECTS) * len(VERBS) * len(OBJECTS) * len(TIMES) // 2:
            raise ValueError(
                f"{wanted} paraphrase triples exceed what the slot tables can make distinct"
            )
        rng = np.random.default_rng(self.sizes.seed)
        by_query: dict[str, tuple[str, str, str]] = {}
        while len(by_query) < wanted:
            triple = random_triple(rng)
            by_query.setdefault(triple[0], triple)
        triples = list(by_query.values())
        return triples[: self.sizes.n_calib], triples[self.sizes.n_calib :]

    def sentences(self) -> list[str]:
        """Evaluation sentences: all queries, then all paraphrases, then all hard negatives."""
        triples = self.triples()[1]
        return [t[0] for t in triples] + [t[1] for t in triples] + [t[2] for t in triples]

    def _make_calibration(self) -> list[Inputs]:
        return [self.encode(text) for triple in self.triples()[0] for text in triple[:2]]

    def _make_evaluation(self) -> tuple[list[Inputs], list[int]]:
        sentences = self.sentences()
        return [self.encode(text) for text in sentences], list(range(len(sentences)))

    def predict(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        return np.asarray(outputs[0], dtype=np.float64).reshape(-1)

    def score(self, predictions: list[np.ndarray], labels: list[int]) -> dict[str, float]:
        embeddings = np.stack(predictions)
        n = len(embeddings) // 3
        queries, corpus = embeddings[:n], embeddings[n:]
        return {"mrr": mean_reciprocal_rank(queries, corpus, list(range(n)))}

    def agreement(
        self, predictions: list[np.ndarray], reference: list[np.ndarray]
    ) -> dict[str, float]:
        return {"cosine_to_float": mean_cosine(np.stack(predictions), np.stack(reference))}
