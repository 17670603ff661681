"""The row kinds of preference and RL tuning beyond pairs: unpaired feedback (KTO's prompt/completion/label) and
prompt-only rows for online RL, through the whole data doctor (format, cleaning, dedup, conflicts, lengths)."""

from __future__ import annotations

import pytest

from tests.conftest import write_jsonl
from tests.unit.test_doctor import assert_counts_add_up, doctor, rejected, tokenizer  # noqa: F401 (fixture)
from tunelab.data.formats import to_examples
from tunelab.data.readers import read_records
from tunelab.errors import TunelabError


def test_feedback_rows_take_true_false_labels_in_any_spelling(tmp_path):
    rows = [{"prompt": "q", "completion": "a", "label": value} for value in (True, "False", 1, "0", "yes", "no")]
    examples = to_examples(read_records(write_jsonl(tmp_path / "f.jsonl", rows)), "auto", {}, None)
    assert [example.desirable for example in examples] == [True, False, True, False, True, False]
    assert {example.kind for example in examples} == {"feedback"}


@pytest.mark.parametrize("label", ["maybe", 2, 0.5, None])
def test_a_feedback_label_that_is_not_true_or_false_names_the_row(tmp_path, label):
    path = write_jsonl(tmp_path / "f.jsonl", [{"prompt": "q", "completion": "a", "label": label}])
    with pytest.raises(TunelabError, match=r"f.jsonl:1: (field 'label' must be true|missing field 'label')"):
        to_examples(read_records(path), "feedback", {}, None)


def test_feedback_rows_through_the_doctor(tmp_path, tokenizer):  # noqa: F811
    rows = [{"prompt": f"question {i}", "completion": f"answer {i}", "label": i % 2 == 0} for i in range(6)]
    rows += [{"prompt": "question 0", "completion": "answer 0", "label": False},  # judged both ways: a conflict
             {"prompt": "question 9", "completion": "   ", "label": True},
             {"prompt": " ", "completion": "x", "label": True}]
    prepared = doctor(tokenizer, tmp_path, train=str(write_jsonl(tmp_path / "f.jsonl", rows)),
                      bad_rows="quarantine")
    assert prepared.report["kinds"] == {"train": "feedback"}
    assert [(r["line"], r["stage"], r["reason"]) for r in rejected(prepared)] == [
        (8, "clean", "empty completion"), (9, "clean", "empty prompt"),
        (7, "label_conflict", f"same prompt and completion as {tmp_path}/f.jsonl:1, judged desirable there and "
                              "undesirable here")]
    assert_counts_add_up(prepared)
    assert prepared.report["splits"]["train"]["tokens"] > 0


def test_prompt_rows_keep_every_other_field_for_the_rewards(tmp_path, tokenizer):  # noqa: F811
    rows = [{"prompt": f"{i}+{i}?", "answer": str(2 * i), "meta": {"level": i}} for i in range(5)]
    rows += [{"prompt": "1+1?", "answer": "2", "meta": {"level": 1}},  # the same row again
             {"prompt": "1+1?", "answer": "two", "meta": {"level": 1}},  # another reference: another row
             {"prompt": "", "answer": "0"}]
    prepared = doctor(tokenizer, tmp_path, train=str(write_jsonl(tmp_path / "p.jsonl", rows)),
                      bad_rows="quarantine")
    assert prepared.report["kinds"] == {"train": "prompt"}
    train = prepared.splits().train
    assert [example.extra["answer"] for example in train] == ["0", "2", "4", "6", "8", "two"]
    assert train[1].messages == [{"role": "user", "content": "1+1?"}] and train[1].extra["meta"] == {"level": 1}
    assert [(r["line"], r["stage"]) for r in rejected(prepared)] == [(8, "clean"), (6, "duplicate")]
    assert_counts_add_up(prepared)


def test_prompt_rows_are_refused_by_sft_in_one_line(tiny_checkpoint, reverse_data, tmp_path, home):
    from tests.conftest import tiny_recipe, train_recipe

    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"word {i}", "answer": str(i)} for i in range(30)])
    with pytest.raises(TunelabError, match=r"p.jsonl: 2\d 'prompt' row\(s\), and task 'sft' trains on chat and text"):
        train_recipe(tiny_recipe(tmp_path, tiny_checkpoint, path), home)
