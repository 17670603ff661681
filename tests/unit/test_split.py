"""Deterministic splits and the held-out overlap check."""

import pytest

from tunelab.data.formats import Example
from tunelab.data.split import check_no_overlap, split_examples
from tunelab.errors import TunelabError


def examples(count):
    return [Example("f.jsonl", i + 1, [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}])
            for i in range(count)]


def keys(rows):
    return [row.line for row in rows]


def test_same_rows_and_seed_give_the_same_split():
    first, second = split_examples(examples(100), 0.1, 0.2, seed=7), split_examples(examples(100), 0.1, 0.2, seed=7)
    for name in ("train", "validation", "test"):
        assert keys(getattr(first, name)) == keys(getattr(second, name))


def test_another_seed_gives_another_split():
    first, second = split_examples(examples(100), 0.1, 0.2, seed=7), split_examples(examples(100), 0.1, 0.2, seed=8)
    assert keys(first.test) != keys(second.test)


def test_split_sizes_and_disjointness():
    splits = split_examples(examples(100), 0.1, 0.2, seed=0)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (70, 10, 20)
    all_lines = keys(splits.train) + keys(splits.validation) + keys(splits.test)
    assert sorted(all_lines) == list(range(1, 101))


def test_zero_fractions_hold_nothing_out():
    splits = split_examples(examples(10), 0, 0, seed=0)
    assert len(splits.train) == 10 and not splits.validation and not splits.test


def test_test_row_equal_to_a_train_row_is_refused():
    rows = examples(20)
    rows.append(Example("f.jsonl", 99, rows[0].messages))  # an exact duplicate of line 1
    splits = split_examples(rows, 0, 0, seed=0)
    splits.test = [splits.train.pop()]  # put the duplicate (line 99) in test
    expected = r"f.jsonl:99: 1 test row\(s\) also appear in train \(first also at f.jsonl:1\)"
    with pytest.raises(TunelabError, match=expected):
        check_no_overlap(splits)
