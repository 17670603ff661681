"""Deterministic train/validation/test split and the exact-overlap check between splits."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

from tunelab.data.formats import Example
from tunelab.errors import TunelabError

SPLITS = ("train", "validation", "test")


@dataclass
class Splits:
    train: list[Example]
    validation: list[Example] = field(default_factory=list)
    test: list[Example] = field(default_factory=list)

    def items(self) -> list[tuple[str, list[Example]]]:
        return [(name, getattr(self, name)) for name in SPLITS]


def split_examples(examples: list[Example], validation: float, test: float, seed: int) -> Splits:
    """Shuffle with `seed` and cut: the same rows and seed always give the same split."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_test = held_out_count(len(examples), test)
    n_validation = held_out_count(len(examples), validation)
    if len(examples) - n_test - n_validation < 1:
        raise TunelabError(f"only {len(examples)} rows: too few to split into train, validation and test")
    test_rows = [examples[i] for i in order[:n_test]]
    validation_rows = [examples[i] for i in order[n_test : n_test + n_validation]]
    train_rows = [examples[i] for i in sorted(order[n_test + n_validation :])]
    return Splits(train_rows, validation_rows, test_rows)


def held_out_count(total: int, fraction: float) -> int:
    if fraction <= 0:
        return 0
    return max(1, round(total * fraction))


def conversation_key(example: Example) -> str:
    """Exact identity of a row's content (where it came from does not count)."""
    content = {key: value for key, value in example.to_json().items() if key not in ("source", "line")}
    return json.dumps(content, sort_keys=True, ensure_ascii=False)


def check_no_overlap(splits: Splits) -> None:
    """A held-out row that also appears in train makes the evaluation dishonest: stop and say where."""
    train_keys = {conversation_key(example): example for example in splits.train}
    for name in ("validation", "test"):
        overlapping = [example for example in getattr(splits, name) if conversation_key(example) in train_keys]
        if overlapping:
            first = overlapping[0]
            twin = train_keys[conversation_key(first)]
            raise TunelabError(
                f"{first.where}: {len(overlapping)} {name} row(s) also appear in train (first also at {twin.where}); "
                "remove the duplicates so the evaluation is held out"
            )
