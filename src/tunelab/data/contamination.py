"""Evaluation rows that the training set already contains, in part: word n-gram overlap.

A validation/test row is a hit when at least `threshold` of its n-grams also occur somewhere in train (the measure
used in the PaLM and Llama 2 contamination studies, there on 8- to 13-grams). A row shorter than n words is one
n-gram of its own, so it is a hit only if a train row has the same words (a short row inside a long one is not:
"ok" is in many texts without being leaked).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

WORDS = re.compile(r"\w+|[^\w\s]+")
COMMON_MIN_ROWS = 3  # an n-gram in this many train rows or fewer always counts, however small the set


def ngrams(text: str, size: int) -> set[tuple[str, ...]]:
    words = WORDS.findall(text.casefold())
    if len(words) <= size:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + size]) for i in range(len(words) - size + 1)}


@dataclass(frozen=True)
class Hit:
    index: int  # the evaluation row
    overlap: float  # share of its n-grams found in train
    train_index: int  # the train row sharing most of them


class TrainNgrams:
    """Every n-gram of the train rows, with the first row it came from and how many rows have it.

    N-grams that many train rows share (a fixed instruction, a template, a signature) say nothing about leakage:
    they are left out of the measure, so templated data is judged on what differs from row to row.
    """

    def __init__(self, texts: list[str], size: int, common_share: float):
        self.size = size
        self.owner: dict[tuple[str, ...], int] = {}
        self.rows: Counter = Counter()
        for index, text in enumerate(texts):
            for gram in ngrams(text, size):
                self.owner.setdefault(gram, index)
                self.rows[gram] += 1
        self.common = max(COMMON_MIN_ROWS, int(common_share * len(texts)))

    def check(self, index: int, text: str, threshold: float) -> Hit | None:
        grams = [gram for gram in ngrams(text, self.size) if self.rows[gram] <= self.common]
        if not grams:
            return None
        owners = [self.owner[gram] for gram in grams if gram in self.owner]
        overlap = len(owners) / len(grams)
        if overlap < threshold:
            return None
        return Hit(index, overlap, Counter(owners).most_common(1)[0][0])


def contamination_hits(eval_texts: list[str], train_texts: list[str], size: int, threshold: float,
                       common_share: float = 0.05) -> list[Hit]:
    index = TrainNgrams(train_texts, size, common_share)
    return [hit for i, text in enumerate(eval_texts) if (hit := index.check(i, text, threshold)) is not None]
