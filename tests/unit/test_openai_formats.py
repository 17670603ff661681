"""OpenAI's fine-tuning file formats read by the data doctor: chat (`messages`), preference (DPO) and
reinforcement (prompt rows), detected as the other formats are."""

import pytest

from tests.conftest import write_jsonl
from tunelab.config.schema import DataSection
from tunelab.data.formats import parse_items, to_examples
from tunelab.data.readers import read_records, scan_records
from tunelab.errors import TunelabError

PREFERENCE = {
    "input": {"messages": [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": "Capital of France?"}],
              "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
              "parallel_tool_calls": False},
    "preferred_output": [{"role": "assistant", "content": "Paris."}],
    "non_preferred_output": [{"role": "assistant", "content": "It is Lyon, I think."}],
}


def test_openai_preference_rows_are_detected_and_read_as_preference(tmp_path):
    second = {**PREFERENCE, "preferred_output": [{"role": "assistant", "content": "draft"},
                                                 {"role": "assistant", "content": "final"}]}
    path = write_jsonl(tmp_path / "dpo.jsonl", [PREFERENCE, second])
    first, other = to_examples(read_records(path), "auto", {}, None)
    assert first.kind == "preference"
    assert first.messages == [{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": "Capital of France?"}]
    assert (first.chosen, first.rejected) == ("Paris.", "It is Lyon, I think.")
    assert other.chosen == "final"  # the last assistant message of the list is the answer


def test_openai_preference_problems_name_the_line(tmp_path):
    no_answer = {**PREFERENCE, "non_preferred_output": [{"role": "user", "content": "?"}]}
    no_messages = {**PREFERENCE, "input": {"tools": []}}
    path = write_jsonl(tmp_path / "dpo.jsonl", [PREFERENCE, no_answer, no_messages])
    examples, bad = parse_items(scan_records(path), "auto", {}, None)
    assert len(examples) == 1
    assert [(row.line, row.reason) for row in bad] == [
        (2, "'non_preferred_output' holds no assistant message"),
        (3, "'input' must be an object with 'messages'")]
    with pytest.raises(TunelabError, match=r"dpo.jsonl:2: 'non_preferred_output' holds no assistant message"):
        to_examples(read_records(path), "openai_preference", {}, None)


def test_openai_chat_rows_with_weights_and_tools_are_messages(tmp_path):
    row = {"messages": [{"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello", "weight": 0},
                        {"role": "user", "content": "again"},
                        {"role": "assistant", "content": "hello again", "weight": 1}],
           "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}
    path = write_jsonl(tmp_path / "chat.jsonl", [row])
    (example,) = to_examples(read_records(path), "auto", {}, None)
    assert example.kind == "chat"
    assert example.messages == [{key: message[key] for key in ("role", "content")} for message in row["messages"]]


def test_openai_reinforcement_rows_are_prompt_rows_with_their_grader_fields(tmp_path):
    row = {"messages": [{"role": "system", "content": "Answer with a number."},
                        {"role": "user", "content": "2 + 2?"}],
           "reference_answer": "4", "tolerance": 0}
    path = write_jsonl(tmp_path / "rft.jsonl", [row])
    data = DataSection(train=str(path), format="prompt", fields={"prompt": "messages"})  # what a recipe says
    (example,) = to_examples(read_records(path), data.format, data.fields, None)
    assert example.kind == "prompt"
    assert example.messages == row["messages"]
    assert example.extra == {"reference_answer": "4", "tolerance": 0}
    with pytest.raises(TunelabError, match="no assistant message to learn from"):  # why auto is not enough
        to_examples(read_records(path), "auto", {}, None)
