"""Reading data files and turning rows into conversations: malformed input stops with file:line."""

import json

import pytest

from tests.conftest import write_jsonl
from tunelab.data.formats import to_examples
from tunelab.data.readers import read_records
from tunelab.errors import TunelabError


def test_jsonl_rows_keep_their_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", "completion": "d"}\n')
    records = read_records(path)
    assert [r.line for r in records] == [1, 3]


def test_malformed_json_line_is_reported_with_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", \n')
    with pytest.raises(TunelabError, match=rf"^{path}:2: not valid JSON"):
        read_records(path)


def test_non_object_line_and_non_utf8_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('[1, 2]\n')
    with pytest.raises(TunelabError, match=r":1: a row must be a JSON object"):
        read_records(path)
    path.write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "\xff"}\n')
    with pytest.raises(TunelabError, match=r":2: not UTF-8"):
        read_records(path)


def test_missing_and_empty_and_unknown_files(tmp_path):
    with pytest.raises(TunelabError, match="data file not found"):
        read_records(tmp_path / "nope.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(TunelabError, match="no rows"):
        read_records(empty)
    odd = tmp_path / "d.txt"
    odd.write_text("x")
    with pytest.raises(TunelabError, match="unsupported file type '.txt'"):
        read_records(odd)


def test_json_csv_and_parquet_give_the_same_rows(tmp_path):
    rows = [{"prompt": "p1", "completion": "c1"}, {"prompt": "p2", "completion": "c2"}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "d.csv").write_text("prompt,completion\np1,c1\np2,c2\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for name in ("d.json", "d.csv", "d.parquet"):
        assert [r.fields for r in read_records(tmp_path / name)] == rows


def test_formats_become_conversations(tmp_path):
    chat = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    alpaca = {"instruction": "do", "input": "this", "output": "done"}
    pc = {"prompt": "q", "completion": "a"}
    for row, expected_user in ((chat, "q"), (alpaca, "do\n\nthis"), (pc, "q")):
        path = write_jsonl(tmp_path / "d.jsonl", [row])
        [example] = to_examples(read_records(path), "auto", {}, None)
        assert example.messages[0] == {"role": "user", "content": expected_user}
        assert example.messages[-1]["role"] == "assistant"


def test_field_mapping_and_system_prompt(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}])
    [example] = to_examples(read_records(path), "auto", {"prompt": "question", "completion": "answer"}, "sys")
    assert example.messages == [{"role": "system", "content": "sys"}, {"role": "user", "content": "q"},
                                {"role": "assistant", "content": "a"}]


def test_row_missing_a_field_is_reported(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "completion": "a"}, {"prompt": "q2"}])
    with pytest.raises(TunelabError, match=rf"^{path}:2: missing field 'completion' \(format prompt_completion\)"):
        to_examples(read_records(path), "prompt_completion", {}, None)


def test_unrecognised_fields_ask_for_a_format(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"q": "x", "a": "y"}])
    with pytest.raises(TunelabError, match=r":1: cannot tell the data format from fields \(a, q\)"):
        to_examples(read_records(path), "auto", {}, None)


def test_bad_messages_are_reported(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "robot", "content": "x"}]}])
    with pytest.raises(TunelabError, match="role 'robot'"):
        to_examples(read_records(path), "messages", {}, None)
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "x"}]}])
    with pytest.raises(TunelabError, match="no assistant message"):
        to_examples(read_records(path), "messages", {}, None)


def test_sharegpt_text_label_and_preference_rows(tmp_path):
    rows = {
        "sharegpt": {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        "text": {"text": "plain words"},
        "label": {"text": "win cash now", "label": "spam"},
        "preference": {"prompt": "q", "chosen": "good", "rejected": "bad"},
    }
    for fmt, row in rows.items():
        path = write_jsonl(tmp_path / f"{fmt}.jsonl", [row])
        [example] = to_examples(read_records(path), "auto", {}, None)
        assert example.kind == {"sharegpt": "chat"}.get(fmt, fmt)
        assert type(example).from_json(example.to_json()) == example
    [chat] = to_examples(read_records(tmp_path / "sharegpt.jsonl"), "auto", {}, None)
    assert chat.messages == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    [labelled] = to_examples(read_records(tmp_path / "label.jsonl"), "auto", {}, None)
    assert (labelled.text, labelled.label) == ("win cash now", "spam")


def test_headerless_tsv_with_named_columns_keeps_quotes(tmp_path):
    path = tmp_path / "SMSCollection"
    path.write_text('ham\tOk "lar"... Joking\nspam\tWin a prize\n')
    records = read_records(path, "tsv", ["label", "text"])
    assert [r.fields for r in records] == [{"label": "ham", "text": 'Ok "lar"... Joking'},
                                           {"label": "spam", "text": "Win a prize"}]
    [first, _] = to_examples(records, "auto", {}, None)
    assert first.kind == "label"


def test_field_mapping_to_the_first_present_column(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"rewritten": None, "intent": "i1", "snippet": "s1"},
                                              {"rewritten": "r2", "intent": "i2", "snippet": "s2"}])
    fields = {"prompt": ["rewritten", "intent"], "completion": "snippet"}
    examples = to_examples(read_records(path), "auto", fields, None)
    assert [e.messages[0]["content"] for e in examples] == ["i1", "r2"]
