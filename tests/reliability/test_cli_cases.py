"""Every CLI case of issue 10 a user meets with bad data: `tunelab data check` refuses (exit 2, file:line) exactly
what `tunelab train` refuses, so it can gate CI; the input files are never changed."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import reverse_rows, tiny_recipe
from tests.unit.test_cli import invoke, one_error_line, write_recipe

GOOD_LINES = [json.dumps(row).encode("utf-8") for row in reverse_rows(40)]
BAD_AT = 7  # the bad row's line in the file

# name: (the bad line, what the refusal says about it)
BAD_JSONL_LINES = {
    "malformed JSON": (b'{"prompt": "abc", "completion": ', "not valid JSON"),
    "a byte that is not UTF-8": (b'{"prompt": "caf\xe9", "completion": "efac"}', "not UTF-8"),
    "a 50 MB line": (json.dumps({"prompt": "a" * 50_000_000, "completion": "b"}).encode(),
                     "line of 50,000,034 bytes is over data.max_row_bytes=10,000,000"),
    "a number where text belongs": (b'{"prompt": 5, "completion": "x"}', "field 'prompt' must be text, got int"),
    "a list where text belongs": (b'{"prompt": "x", "completion": ["y"]}', "field 'completion' must be text"),
    "a missing field": (b'{"prompt": "abc"}', "missing field 'completion'"),
    "an array instead of an object": (b"[1, 2]", "a row must be a JSON object, got list"),
}


def data_file(tmp_path, bad_line: bytes, name="d.jsonl"):
    lines = GOOD_LINES[: BAD_AT - 1] + [bad_line] + GOOD_LINES[BAD_AT - 1:]
    path = tmp_path / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def refusal(capsys, *args) -> str:
    code, _, err = invoke(capsys, *args)
    assert code == 2, err
    return one_error_line(err)


@pytest.mark.parametrize("case", list(BAD_JSONL_LINES))
def test_data_check_refuses_what_train_refuses(capsys, tmp_path, home, tiny_checkpoint, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    bad_line, reason = BAD_JSONL_LINES[case]
    data = data_file(tmp_path, bad_line)
    recipe = write_recipe(tmp_path, tiny_recipe(tmp_path, tiny_checkpoint, data))
    given = {path: path.read_bytes() for path in (data, recipe)}
    where = f"{data}:{BAD_AT}: "
    trained = refusal(capsys, "train", str(recipe))  # stops at the row before any other work
    assert where + reason in trained
    checked = refusal(capsys, "data", "check", str(recipe))
    assert where + reason in checked
    assert refusal(capsys, "train", str(recipe)) == trained  # the check's cached result refuses alike
    assert refusal(capsys, "data", "check", str(data), "--model", str(tiny_checkpoint)).endswith(
        checked.split("data not usable as it is: ")[1])  # a bare data file too
    assert {path: path.read_bytes() for path in given} == given
    assert not (tmp_path / "run").exists()
    assert json.loads((tmp_path / "data_check" / "recipe" / "rejected.jsonl").read_text())["line"] == BAD_AT


def test_data_check_counts_every_refused_row(capsys, tmp_path, home, tiny_checkpoint, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = data_file(tmp_path, b"not json")
    data.write_bytes(data.read_bytes() + b'{"prompt": 1, "completion": "x"}\n')
    line = refusal(capsys, "data", "check", str(data), "--model", str(tiny_checkpoint))
    assert f"{data}:{BAD_AT}: not valid JSON" in line and "(and 1 more problem(s); see rejected.jsonl)" in line


def test_with_quarantine_both_accept_the_file(capsys, tmp_path, home, tiny_checkpoint, monkeypatch):
    """data.bad_rows: quarantine sets bad rows aside: train goes on, and so does data check."""
    monkeypatch.chdir(tmp_path)
    data = data_file(tmp_path, b'{"prompt": 5, "completion": "x"}')
    recipe = tiny_recipe(tmp_path, tiny_checkpoint, data, train={"max_steps": 1, "save_every": 1, "eval_every": 1})
    recipe["data"]["bad_rows"] = "quarantine"
    recipe = write_recipe(tmp_path, recipe)
    code, _, err = invoke(capsys, "data", "check", str(recipe))
    assert code == 0, err
    code, _, err = invoke(capsys, "train", str(recipe), "--no-eval")
    assert code == 0, err


def test_rows_the_task_does_not_train_on(capsys, tmp_path, home, tiny_checkpoint, monkeypatch):
    """Label rows under task sft: train refuses them, so data check of that recipe does too."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "labels.jsonl"
    data.write_text("".join(json.dumps({"text": f"text {i}", "label": "ab"[i % 2]}) + "\n" for i in range(40)))
    recipe = write_recipe(tmp_path, tiny_recipe(tmp_path, tiny_checkpoint, data))
    trained = refusal(capsys, "train", str(recipe))
    assert "'label' row(s), and task 'sft' trains on" in trained
    assert refusal(capsys, "data", "check", str(recipe)) == trained


@pytest.mark.parametrize("content, reason", [
    (b"prompt,completion\nabc,cba\ncaf\xe9,x\n", ":3: not UTF-8"),
    (b"prompt,completion\nabc,cba\nx,y,z\n", ":3: more values than columns"),
])
def test_csv_rows_too(capsys, tmp_path, home, tiny_checkpoint, monkeypatch, content, reason):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "d.csv"
    data.write_bytes(content + b"".join(f"{w},{w[::-1]}\n".encode() for w in ("bcd", "cde", "def", "efg", "fgh")))
    recipe = write_recipe(tmp_path, tiny_recipe(tmp_path, tiny_checkpoint, data))
    assert f"{data}{reason}" in refusal(capsys, "train", str(recipe))
    assert f"{data}{reason}" in refusal(capsys, "data", "check", str(recipe))
    assert data.read_bytes().startswith(content)


# ---- Ctrl-C during training ----------------------------------------------------------------------------------------

def test_ctrl_c_during_train_says_resume_continues(tmp_path, home, tiny_checkpoint, reverse_data):
    """A real SIGINT to `tunelab train` once its first checkpoint exists: one line naming the command that continues
    (overrides included), exit code 130, the run marked interrupted."""
    recipe = write_recipe(tmp_path, tiny_recipe(tmp_path, tiny_checkpoint, reverse_data))
    overrides = ["train.max_steps=100000", "train.save_every=2", "train.eval_every=1000"]
    env = {**os.environ, "TUNELAB_HOME": str(home)}
    process = subprocess.Popen([sys.executable, "-m", "tunelab", "train", str(recipe), *overrides, "--no-eval"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "run"
    deadline = time.monotonic() + 120

    def committed() -> bool:  # a whole checkpoint, not one being written: the interrupt lands between steps
        from tunelab.train.checkpoints import is_committed

        return any(is_committed(path) for path in run.rglob("checkpoint-*"))

    while not committed() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process.poll() is None, process.stderr.read()
    process.send_signal(signal.SIGINT)
    try:
        _, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # say what it had written before it hung, then stop it
        process.kill()
        _, err = process.communicate()
        raise AssertionError(f"no exit 120 s after SIGINT; stderr so far:\n{err}") from None
    assert process.returncode == 130, err
    last = [line for line in err.splitlines() if line.strip()][-1]
    command = shlex.join(["tunelab", "train", str(recipe), *overrides, "--resume"])
    assert last == f"interrupted; `{command}` continues the run in {run} from its last checkpoint"
    assert "Traceback" not in err
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
