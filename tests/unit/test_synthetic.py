"""The generated data sets: the quick start's notes-to-json, and the same notes as preference pairs, feedback rows
and prompts with references; each deterministic from its seed and read by the data doctor as the row kind its task
trains on."""

import json

import pytest

from tunelab.data.formats import parse_items
from tunelab.data.readers import Record
from tunelab.data.synthetic import PREAMBLES, generate_rows

TASKS = ("notes-to-json", "notes-to-json-pairs", "notes-to-json-feedback", "notes-to-json-prompts")


def bad_kind(answer: str, right: str) -> str:
    """Which worse answer this is: verbose (the right JSON inside chat), wrong (other JSON) or prose."""
    if answer.split("\n")[0] in PREAMBLES:
        body = answer.split("\n\n")[1]
        assert json.loads(body) == json.loads(right)
        return "verbose"
    try:
        value = json.loads(answer)
    except json.JSONDecodeError:
        assert "{" not in answer
        return "prose"
    assert isinstance(value, dict) and value != json.loads(right)
    assert len(set(value.items()) ^ set(json.loads(right).items())) <= 2  # one field wrong or missing
    return "wrong"


@pytest.mark.parametrize("task", TASKS)
def test_each_data_set_is_deterministic_from_its_seed_and_has_the_rows_asked(task):
    rows = generate_rows(task, 120, seed=5)
    assert len(rows) == 120 and rows == generate_rows(task, 120, seed=5)
    assert rows != generate_rows(task, 120, seed=6)
    assert len({row["prompt"] for row in rows}) == 120


@pytest.mark.parametrize("task", TASKS[1:])
def test_every_data_set_has_the_notes_of_the_quick_start(task):
    notes = generate_rows("notes-to-json", 50, seed=2)
    assert [row["prompt"] for row in generate_rows(task, 50, seed=2)] == [row["prompt"] for row in notes]


def test_pairs_choose_the_compact_right_json_over_each_kind_of_worse_answer():
    right = {row["prompt"]: row["completion"] for row in generate_rows("notes-to-json", 300, seed=0)}
    kinds = []
    for row in generate_rows("notes-to-json-pairs", 300, seed=0):
        assert set(row) == {"prompt", "chosen", "rejected"}
        assert row["chosen"] == right[row["prompt"]] and row["rejected"] != row["chosen"]
        kinds.append(bad_kind(row["rejected"], row["chosen"]))
    assert {kind: kinds.count(kind) > 60 for kind in ("verbose", "wrong", "prose")} == {
        "verbose": True, "wrong": True, "prose": True}


def test_feedback_rows_judge_one_answer_per_note_both_ways():
    right = {row["prompt"]: row["completion"] for row in generate_rows("notes-to-json", 300, seed=0)}
    rows = generate_rows("notes-to-json-feedback", 300, seed=0)
    good = [row for row in rows if row["label"] is True]
    bad = [row for row in rows if row["label"] is False]
    assert len(good) + len(bad) == 300 and 100 < len(good) < 200
    assert all(row["completion"] == right[row["prompt"]] for row in good)
    assert {bad_kind(row["completion"], right[row["prompt"]]) for row in bad} == {"verbose", "wrong", "prose"}


def test_prompt_rows_carry_the_reference_json_and_its_fields():
    for row in generate_rows("notes-to-json-prompts", 50, seed=0):
        reference = json.loads(row["reference"])
        assert set(reference) == {"customer", "item", "color", "quantity", "city", "day", "urgent"}
        assert {key: row[key] for key in reference} == reference


@pytest.mark.parametrize("task, kind", [("notes-to-json", "chat"), ("notes-to-json-pairs", "preference"),
                                        ("notes-to-json-feedback", "feedback"), ("notes-to-json-prompts", "prompt")])
def test_the_data_doctor_reads_each_as_the_kind_its_tasks_train_on(task, kind):
    records = [Record(row, f"generated:{task}", line) for line, row in enumerate(generate_rows(task, 40, 0), 1)]
    examples, bad = parse_items(records, "auto", {}, None)
    assert not bad and {example.kind for example in examples} == {kind}
    if kind == "prompt":
        assert json.loads(examples[0].extra["reference"])["customer"] == examples[0].extra["customer"]
