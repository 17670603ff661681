"""`data.num_proc: 2` gives exactly what `data.num_proc: 1` gives on a set large enough for the doctor to go
parallel (2,000 rows and up): the same prepared splits and token ids, the same rejected rows and the same report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import unique_words
from tests.tiny import tiny_tokenizer
from tunelab.config.schema import DataSection
from tunelab.data.cache import prepare_data
from tunelab.data.stages import PARALLEL_FROM_ROWS

GOOD = 2100  # distinct good rows; with the planted bad ones the set is over the doctor's parallel threshold
FILES = ["train.jsonl", "validation.jsonl", "test.jsonl", "rejected.jsonl", "tokens/train.jsonl",
         "tokens/validation.jsonl", "tokens/test.jsonl"]


def write_data(path: Path, good: int = GOOD) -> Path:
    """`good` distinct rows, with every tenth of the first 1,000 repeated later, and bad rows of each kind."""
    words = unique_words(good, "abcdefghij", seed=7)
    lines = [json.dumps({"prompt": f"reverse {word}", "completion": word[::-1]}) for word in words]
    lines += lines[:1000:10]  # exact duplicates
    lines += ["{broken json"] * 5 + [json.dumps({"prompt": "no answer"})] * 5  # unreadable; missing field
    lines += [json.dumps({"prompt": f"empty {n}", "completion": "  "}) for n in range(5)]  # empty answer
    lines += [json.dumps({"prompt": f"{word} " * 20, "completion": word})  # over max_length
              for word in unique_words(5, "klmnop", seed=8)]
    path.write_text("\n".join(lines) + "\n")
    return path


def prepared(path: Path, num_proc: int, home: Path):
    tokenizer = tiny_tokenizer()
    data = DataSection(train=str(path), format="prompt_completion", max_length=64, num_proc=num_proc,
                       split={"validation": 0.1, "test": 0.1, "seed": 3})
    return prepare_data(data, tokenizer, {tokenizer.eos_token_id}, 1024, home, check=True)


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parallel")
    path = write_data(tmp / "rows.jsonl")
    assert path.read_text().count("\n") >= PARALLEL_FROM_ROWS
    # separate homes: the cache key leaves out num_proc, so one home would answer the second call from the cache
    return prepared(path, 1, tmp / "home-1"), prepared(path, 2, tmp / "home-2")


def test_both_did_the_work_with_the_workers_asked_for(both):
    serial, parallel = both
    assert serial.from_cache is False and parallel.from_cache is False
    assert serial.report["timing"]["workers"] == 1 and parallel.report["timing"]["workers"] == 2
    assert serial.key == parallel.key


def test_the_same_splits_token_ids_and_rejected_rows(both):
    serial, parallel = both
    for name in FILES:
        assert (parallel.folder / name).read_bytes() == (serial.folder / name).read_bytes(), name


def test_the_same_report_but_for_its_timing(both):
    serial, parallel = both
    without_timing = [{k: v for k, v in p.report.items() if k != "timing"} for p in both]
    assert without_timing[0] == without_timing[1]
    counts, stages = serial.report["counts"], serial.report["rejected_by_stage"]
    assert counts["read"] == GOOD + 100 + 20
    assert {"read": 5, "parse": 5, "clean": 5, "duplicate": 100, "length": 5}.items() <= stages.items()
    assert sum(serial.report["splits"][name]["rows"] for name in ("train", "validation", "test")) == counts["kept"]
