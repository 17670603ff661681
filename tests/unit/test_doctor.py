"""The data doctor on small files and the tiny tokenizer: every row accounted for, bad rows quarantined with
their reason, duplicates, contamination, the template lint, the cache."""

import json
import random

import pytest

from tests.conftest import reverse_rows, write_jsonl
from tests.tiny import tiny_tokenizer
from tunelab.config.schema import DataSection
from tunelab.data.cache import prepare_data
from tunelab.data.templates import CHATML_TEMPLATE
from tunelab.errors import TunelabError


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def doctor(tokenizer, tmp_path, check=True, **data):
    section = DataSection(**{"split": {"validation": 0, "test": 0}, "max_length": 256, **data})
    return prepare_data(section, tokenizer, {tokenizer.eos_token_id}, 1024, tmp_path / "home", check=check)


def rejected(prepared):
    return [json.loads(line) for line in (prepared.folder / "rejected.jsonl").read_text().splitlines()]


def assert_counts_add_up(prepared):
    counts = prepared.report["counts"]
    assert counts["read"] == counts["kept"] + counts["rejected"]
    kept_rows = sum(info["rows"] - info["added"] for info in prepared.report["splits"].values())
    assert kept_rows == counts["kept"]
    assert len(rejected(prepared)) == counts["rejected"]


def sentences(count, seed=0):
    """Distinct sentences of random words: a clean set with no duplicates of any kind."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(400)]
    return [" ".join(rng.choice(words) for _ in range(12)) for _ in range(count)]


def test_bad_input_is_quarantined_with_reasons(tmp_path, tokenizer):
    path = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps({"prompt": "good one", "completion": "fine"}).encode(),
        b'{"prompt": "caf\xff", "completion": "x"}',  # not UTF-8
        b"[1, 2, 3]",  # not an object
        b'{"prompt": "broken", ',  # not JSON
        json.dumps({"instruction": "alpaca row", "output": "in another format"}).encode(),
        json.dumps({"prompt": "   ", "completion": "empty prompt"}).encode(),
        json.dumps({"prompt": "x" * 50_000_000, "completion": "a 50 MB line"}).encode(),
        json.dumps({"prompt": "good two", "completion": "fine too"}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    prepared = doctor(tokenizer, tmp_path, train=str(path))
    reasons = {row["line"]: (row["stage"], row["reason"]) for row in rejected(prepared)}
    assert reasons[2][0] == "read" and "not UTF-8" in reasons[2][1]
    assert reasons[3] == ("read", "a row must be a JSON object, got list")
    assert reasons[4][0] == "read" and "not valid JSON" in reasons[4][1]
    assert reasons[5][0] == "parse" and "row is in format 'alpaca', not the file's 'prompt_completion'" in reasons[5][1]
    assert reasons[6] == ("clean", "no prompt left (empty turns)")
    size = len(lines[6]) + 1  # with its newline
    assert reasons[7] == ("read", f"line of {size:,} bytes is over data.max_row_bytes=10,000,000")
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7]
    assert all(row["source"] == str(path) for row in rejected(prepared))
    assert len(next(row for row in rejected(prepared) if row["line"] == 7)["raw"]) == 100_000  # a preview
    assert prepared.report["counts"] == {"read": 8, "kept": 2, "rejected": 6, "added": 0, "final": 2,
                                         "by_file": {"train": {"read": 8, "kept": 2, "rejected": 6}}}
    assert_counts_add_up(prepared)


def test_bad_rows_stop_by_default_and_are_set_aside_on_request(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{oops\n{"prompt": "c", "completion": "d"}\n')
    with pytest.raises(TunelabError, match=rf"^{path}:2: not valid JSON .*data.bad_rows: quarantine"):
        doctor(tokenizer, tmp_path, check=False, train=str(path))
    prepared = doctor(tokenizer, tmp_path, check=False, train=str(path), bad_rows="quarantine")
    assert prepared.report["counts"]["rejected"] == 1


def test_nothing_usable_left_is_a_problem(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text("[1]\n\"text\"\n")
    prepared = doctor(tokenizer, tmp_path, train=str(path), format="prompt_completion")
    assert prepared.problems == ["nothing usable left: all 2 train rows were rejected (1: a row must be a JSON "
                                 "object, got list; 1: a row must be a JSON object, got str; see rejected.jsonl)"]
    with pytest.raises(TunelabError, match="nothing usable left"):
        doctor(tokenizer, tmp_path, check=False, train=str(path), format="prompt_completion", bad_rows="quarantine")


def test_one_class_and_equal_preference_answers(tmp_path, tokenizer):
    labels = write_jsonl(tmp_path / "l.jsonl", [{"text": f"message {i}", "label": "ham"} for i in range(5)])
    assert "every label row has the class 'ham'" in doctor(tokenizer, tmp_path, train=str(labels)).problems[0]
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q1", "chosen": "yes", "rejected": "no"},
                                               {"prompt": "q2", "chosen": "same", "rejected": "same"}])
    prepared = doctor(tokenizer, tmp_path, train=str(pairs))
    assert [(r["line"], r["reason"]) for r in rejected(prepared)] == [
        (2, "chosen and rejected are the same answer: nothing to prefer")]


def test_cleaning_normalises_and_counts_personal_data(tmp_path, tokenizer):
    rows = [{"prompt": "Cafe\u0301\r\nmail ana@example.com\x07  ", "completion": " call +44 20 7946 0958 "},
            {"prompt": "card 4111 1111 1111 1111 from 10.0.0.1", "completion": "ok"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    prepared = doctor(tokenizer, tmp_path, train=str(path), pii={"scrub": True})
    assert prepared.report["pii"] == {"counts": {"email": 1, "phone": 1, "credit_card": 1, "ip": 1},
                                      "scrubbed": True}
    train = prepared.splits().train
    assert train[0].messages == [{"role": "user", "content": "Caf\u00e9\nmail <EMAIL>"},
                                 {"role": "assistant", "content": "call <PHONE>"}]
    assert train[1].messages[0]["content"] == "card <CREDIT_CARD> from <IP>"
    counted_only = doctor(tokenizer, tmp_path, train=str(path))
    assert counted_only.report["pii"]["counts"]["email"] == 1
    assert "ana@example.com" in counted_only.splits().train[0].messages[0]["content"]


def test_dedup_finds_planted_duplicates_and_nothing_else(tmp_path, tokenizer):
    texts = sentences(200)
    rows = [{"text": text} for text in texts]
    rows.append({"text": texts[10].upper()})  # exact once case is ignored
    near = texts[20].split(" ")
    near[5] = "changed"
    rows.append({"text": " ".join(near)})  # one word of twelve differs
    rows.append({"text": texts[30] + " and a tail"})
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    prepared = doctor(tokenizer, tmp_path, train=str(path), dedup={"threshold": 0.6})
    found = {row["line"]: (row["stage"], row["reason"]) for row in rejected(prepared)}
    assert set(found) == {201, 202, 203}
    assert found[201][0] == "duplicate" and found[201][1].startswith(f"duplicate of {path}:11 ")
    assert found[202][0] == "near_duplicate" and f"near-duplicate of {path}:21 " in found[202][1]
    assert found[203][0] == "near_duplicate" and f"{path}:31 " in found[203][1]
    assert prepared.report["duplicates"] == {"exact": 1, "near": 2, "label_conflicts": 0, "across_splits": 0}


def test_no_false_duplicates_on_a_clean_set(tmp_path, tokenizer):
    from tunelab.data.synthetic import generate_rows

    path = write_jsonl(tmp_path / "clean.jsonl", reverse_rows(300) + generate_rows("notes-to-json", 300, 0))
    prepared = doctor(tokenizer, tmp_path, train=str(path), max_length=1024)
    assert prepared.report["counts"]["rejected"] == 0


def test_label_conflicts_are_named(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "l.jsonl", [{"text": "win a prize", "label": "spam"},
                                              {"text": "see you", "label": "ham"},
                                              {"text": "Win a  prize", "label": "ham"}])
    [row] = rejected(doctor(tokenizer, tmp_path, train=str(path)))
    assert row["stage"] == "label_conflict" and "labelled 'spam' there and 'ham' here" in row["reason"]


def test_contamination_finds_planted_overlaps_and_removes_them(tmp_path, tokenizer):
    texts = sentences(120, seed=1)
    train = [{"prompt": text, "completion": "answer " + text[:6]} for text in texts[:100]]
    # The prompt of train row 6 with another answer: most of its 8-grams, but too different to be a near-duplicate.
    test = [{"prompt": text, "completion": "other"} for text in texts[100:]] + [
        {"prompt": texts[5], "completion": "something else entirely"}]
    train_path, test_path = write_jsonl(tmp_path / "train.jsonl", train), write_jsonl(tmp_path / "test.jsonl", test)
    prepared = doctor(tokenizer, tmp_path, train=str(train_path), test=str(test_path))
    hits = prepared.report["contamination"]["hits"]
    assert [(h["where"], h["train_where"], h["removed"]) for h in hits] == [
        (f"{test_path}:21", f"{train_path}:6", True)]
    assert len(prepared.splits().test) == 20
    [row] = rejected(prepared)
    assert row["stage"] == "contamination" and row["split"] == "test"
    reported = doctor(tokenizer, tmp_path, train=str(train_path), test=str(test_path),
                      contamination={"action": "report"})
    assert len(reported.splits().test) == 21 and reported.report["contamination"]["hits"][0]["removed"] is False


def test_evaluation_rows_repeating_train_leave_the_split(tmp_path, tokenizer):
    rows = reverse_rows(40)
    train_path = write_jsonl(tmp_path / "train.jsonl", rows[:30])
    test_path = write_jsonl(tmp_path / "test.jsonl", rows[25:40])  # 5 of them are train rows
    prepared = doctor(tokenizer, tmp_path, train=str(train_path), test=str(test_path))
    assert len(prepared.splits().test) == 10
    assert prepared.report["duplicates"]["across_splits"] == 5
    assert prepared.report["counts"]["by_file"]["test"] == {"read": 15, "kept": 10, "rejected": 5}


def test_length_filters_in_tokens(tmp_path, tokenizer):
    rows = [{"prompt": "short", "completion": "ok"}, {"prompt": "x" * 300, "completion": "long"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    dropped = doctor(tokenizer, tmp_path, train=str(path), max_length=64)
    [row] = rejected(dropped)
    assert row["stage"] == "length" and "over data.max_length=64" in row["reason"]
    rows[1] = {"prompt": "x", "completion": "y" * 300}  # cut inside the answer: kept, counted
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    truncated = doctor(tokenizer, tmp_path, train=str(path), max_length=64, overlong="truncate")
    assert truncated.report["splits"]["train"]["truncated"] == 1 and truncated.report["counts"]["rejected"] == 0
    assert max(len(row.input_ids) for row in truncated.tokenized()["train"].rows) == 64
    too_short = doctor(tokenizer, tmp_path, train=str(path), clean={"min_tokens": 40}, max_length=512)
    assert [r["line"] for r in rejected(too_short)] == [1]


def test_template_lint_passes_on_chatml_and_highlights_the_answer(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", reverse_rows(10))
    lint = doctor(tokenizer, tmp_path, train=str(path)).report["lint"]
    assert [c["name"] for c in lint["checks"] if c["passed"]] == [
        "renders", "loss_on_answers", "end_of_turn_in_loss", "same_as_inference", "fits_context"]
    first = lint["examples"][0]["segments"]
    assert [text for text, loss in first if loss] == [reverse_rows(10)[0]["completion"] + "<|im_end|>"]


def test_template_lint_catches_end_of_turn_outside_the_labels(tmp_path, tokenizer):
    from tunelab.data.formats import Example
    from tunelab.data.lint import lint_template

    bad = tiny_tokenizer()
    # Closes a turn only when the next one starts: the end-of-turn after an answer is rendered as part of the
    # next prompt, and the last answer has none at all.
    bad.chat_template = (
        "{% for m in messages %}{% if not loop.first %}<|im_end|>\n{% endif %}"
        "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<|im_end|>\n<|im_start|>assistant\n{% endif %}"
    )
    example = Example("f.jsonl", 1, messages=[{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": "hello"}])
    report = lint_template(bad, [example], {bad.eos_token_id}, 64, 1024)
    failed = {check.name: check.detail for check in report.failures}
    assert set(failed) == {"end_of_turn_in_loss"}
    assert "f.jsonl:1" in failed["end_of_turn_in_loss"]
    with pytest.raises(TunelabError, match="template lint: end_of_turn_in_loss: f.jsonl:1"):
        report.raise_if_failed()
    good = tiny_tokenizer()
    good.chat_template = CHATML_TEMPLATE
    assert not lint_template(good, [example], {good.eos_token_id}, 64, 1024).failures


def test_template_lint_catches_a_max_length_beyond_the_context(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", reverse_rows(10))
    section = DataSection(train=str(path), max_length=4096)
    prepared = prepare_data(section, tokenizer, {tokenizer.eos_token_id}, 2048, tmp_path / "home", check=True)
    assert prepared.problems == ["template lint: fits_context: data.max_length=4096 is longer than the model's "
                                 "context window (2048 tokens); lower it to 2048 or less"]


def test_augmentation_adds_reported_rows_to_train_only(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", reverse_rows(20))
    prepared = doctor(tokenizer, tmp_path, train=str(path), split={"validation": 0, "test": 0.2},
                      augment={"prompt_templates": ["Reverse: {prompt}", "Backwards please: {prompt}"],
                               "noise_copies": 1, "noise_rate": 0.5})
    report = prepared.report
    assert report["augmented"] == {"template": 32, "noise": 16}
    assert report["splits"]["train"]["rows"] == 16 + 48 and report["splits"]["test"]["added"] == 0
    train = prepared.splits().train
    templated = [e for e in train if e.origin == "augment: template 1"]
    assert templated[0].messages[0]["content"].startswith("Reverse: ")
    original = next(e for e in train if e.origin is None and e.line == templated[0].line)
    assert templated[0].messages[-1] == original.messages[-1]  # the answer never changes
    assert_counts_add_up(prepared)


def test_a_second_run_is_a_cache_hit_and_a_change_is_not(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", reverse_rows(30))
    first = doctor(tokenizer, tmp_path, train=str(path))
    again = doctor(tokenizer, tmp_path, train=str(path))
    assert not first.from_cache and again.from_cache and again.key == first.key
    assert doctor(tokenizer, tmp_path, train=str(path), dedup={"threshold": 0.9}).key != first.key
    write_jsonl(path, reverse_rows(31))
    assert not doctor(tokenizer, tmp_path, train=str(path)).from_cache


def test_lint_flags_loss_outside_the_answer_and_an_unlabelled_end_of_turn(tokenizer):
    from tunelab.data.formats import Example
    from tunelab.data.lint import row_problems
    from tunelab.data.templates import IGNORE_INDEX, Encoded, encode_example

    example = Example("f.jsonl", 1, messages=[{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": "hello"}])
    eos = tokenizer.eos_token_id
    good = encode_example(tokenizer, example, {eos})
    assert row_problems(tokenizer, tokenizer, example, good, {eos}) == []
    eos_masked = Encoded(good.input_ids, [IGNORE_INDEX if t == eos else label
                                          for t, label in zip(good.input_ids, good.labels)])
    names = {name for name, _ in row_problems(tokenizer, tokenizer, example, eos_masked, {eos})}
    assert "end_of_turn_in_loss" in names
    prompt_labelled = Encoded(good.input_ids, list(good.input_ids))  # loss on the prompt too
    problems = dict(row_problems(tokenizer, tokenizer, example, prompt_labelled, {eos}))
    assert "loss_on_answers" in problems and "'hello'" in problems["loss_on_answers"]


GOLDEN = {  # one row per format, and what the doctor makes of it (checked by hand)
    "messages": ({"messages": [{"role": "system", "content": "Be brief. "}, {"role": "user", "content": "Hi\u00a0"},
                               {"role": "assistant", "content": "Hello"}]},
                 {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                               {"role": "assistant", "content": "Hello"}]}),
    "sharegpt": ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": " a "}]},
                 {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}),
    "prompt_completion": ({"question": "2+2?", "answer": "4"},
                          {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}),
    "alpaca": ({"instruction": "Add", "input": "2 and 2", "output": "4"},
               {"messages": [{"role": "user", "content": "Add\n\n2 and 2"}, {"role": "assistant", "content": "4"}]}),
    "text": ({"text": "Plain\x00 text.\r\n"}, {"text": "Plain text."}),
    "label": ({"text": "win cash", "label": 1}, {"text": "win cash", "label": "1"}),
    "preference": ({"prompt": "q", "chosen": "good", "rejected": "bad"},
                   {"messages": [{"role": "user", "content": "q"}], "chosen": "good", "rejected": "bad"}),
    "feedback": ({"prompt": "q", "completion": " fine ", "label": "false"},
                 {"messages": [{"role": "user", "content": "q"}], "completion": "fine", "desirable": False}),
    "prompt": ({"prompt": "2+2?", "answer": "4", "tags": ["math"]},
               {"messages": [{"role": "user", "content": "2+2?"}], "extra": {"answer": "4", "tags": ["math"]}}),
}


@pytest.mark.parametrize("fmt", list(GOLDEN))
def test_golden_rows_for_each_format(tmp_path, tokenizer, fmt):
    row, expected = GOLDEN[fmt]
    path = write_jsonl(tmp_path / "d.jsonl", [row, row])  # the copy is a duplicate
    fields = {"prompt": "question", "completion": "answer"} if fmt == "prompt_completion" else {}
    prepared = doctor(tokenizer, tmp_path, train=str(path), fields=fields)
    [example] = prepared.splits().train
    assert {k: v for k, v in example.to_json().items() if k not in ("source", "line")} == expected
    assert prepared.report["kinds"] == {"train": {"sharegpt": "chat", "messages": "chat", "alpaca": "chat",
                                                    "prompt_completion": "chat"}.get(fmt, fmt)}
    assert [r["stage"] for r in rejected(prepared)] == ["duplicate"]


def test_delimited_rows_with_bad_bytes_or_extra_values_are_set_aside(tmp_path, tokenizer):
    path = tmp_path / "sms.tsv"
    path.write_bytes(b"ham\tsee you soon\nspam\twin \xff\xfe cash\nham\tone\textra\nspam\tfree prize now\n")
    prepared = doctor(tokenizer, tmp_path, train=str(path), file_type="tsv", columns=["label", "text"])
    assert [(r["line"], r["stage"], r["reason"]) for r in rejected(prepared)] == [
        (2, "read", "not UTF-8 (character 5 of a field)"), (3, "read", "more values than columns")]
    assert prepared.report["splits"]["train"]["labels"] == {"ham": 1, "spam": 1}


def test_too_few_rows_to_split_is_a_problem_not_a_crash(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", reverse_rows(2) + reverse_rows(2))  # 2 duplicates leave 2 rows
    prepared = doctor(tokenizer, tmp_path, train=str(path), split={"validation": 0.4, "test": 0.4})
    assert prepared.problems == ["only 2 rows: too few to split into train, validation and test"]
    assert_counts_add_up(prepared)


def test_a_json_file_with_a_bad_byte_is_one_error_with_its_line(tmp_path, tokenizer):
    path = tmp_path / "d.json"
    path.write_bytes(b'[{"prompt": "a", "completion": "b"},\n {"prompt": "\xff", "completion": "c"}]')
    with pytest.raises(TunelabError, match=rf"^{path}:2: not UTF-8 \(byte 51 of the file\)$"):
        doctor(tokenizer, tmp_path, train=str(path))


def test_a_test_row_repeating_a_validation_row_leaves_the_test_split(tmp_path, tokenizer):
    rows = reverse_rows(40)
    paths = {name: write_jsonl(tmp_path / f"{name}.jsonl", part)
             for name, part in (("train", rows[:30]), ("validation", rows[30:35]), ("test", rows[33:40]))}
    prepared = doctor(tokenizer, tmp_path, **{name: str(path) for name, path in paths.items()})
    assert [(r["split"], r["reason"]) for r in rejected(prepared)] == [
        ("test", f"exact duplicate of validation row {paths['validation']}:4"),
        ("test", f"exact duplicate of validation row {paths['validation']}:5")]
    assert len(prepared.splits().test) == 5
