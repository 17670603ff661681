"""The command line: one clear line and exit code 2 for bad input; train -> eval -> generate on a tiny model."""

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import tiny_recipe, write_jsonl
from tunelab.cli import main


def invoke(capsys, *args):
    """Run `tunelab ARGS`; returns (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exit:
        code = exit.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def write_recipe(tmp_path, recipe, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_help_does_not_import_the_heavy_libraries():
    code = ("import sys; from tunelab.cli import app; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def one_error_line(err):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"data": {"train": "missing.jsonl"}}, "missing.jsonl: data file not found"),
        ({"model": {"name": "no-such-model"}}, "model.name: 'no-such-model' is not a built-in model"),
        ({"data": {"format": "tsv"}}, "data.format: Input should be"),
        ({"method": {"name": "lora", "target_modules": ["nothing"]}}, "match no layer of the model"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, home, tiny_checkpoint, reverse_data, change, message):
    recipe = tiny_recipe(tmp_path, tiny_checkpoint, reverse_data)
    for section, values in change.items():
        recipe[section].update(values)
    code, _, err = invoke(capsys, "train", str(write_recipe(tmp_path, recipe)))
    assert code == 2
    assert message in one_error_line(err)
    assert not (tmp_path / "run").exists()


def test_empty_and_malformed_data(capsys, tmp_path, home, tiny_checkpoint):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, _, err = invoke(capsys, "train", str(write_recipe(tmp_path, tiny_recipe(tmp_path, tiny_checkpoint, empty))))
    assert code == 2 and "no rows" in one_error_line(err)
    missing_field = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "c"}])
    recipe = tiny_recipe(tmp_path, tiny_checkpoint, missing_field)
    code, _, err = invoke(capsys, "train", str(write_recipe(tmp_path, recipe)))
    assert code == 2 and f"{missing_field}:2: missing field 'completion'" in one_error_line(err)


def test_train_eval_generate_on_a_tiny_model(capsys, tmp_path, home, tiny_checkpoint, reverse_data):
    recipe_path = write_recipe(tmp_path, tiny_recipe(tmp_path, tiny_checkpoint, reverse_data))
    code, out, err = invoke(capsys, "train", str(recipe_path), "train.max_steps=4", "train.save_every=2")
    assert code == 0, err
    assert "base vs tuned" in out and "exact_match" in out
    run_dir = tmp_path / "run"
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["rows"] == 6 and set(report["base"]) >= {"loss", "perplexity", "exact_match"}
    record = json.loads((run_dir / "run.json").read_text())
    assert record["evaluation"]["tuned"]["loss"] == report["tuned"]["loss"]
    assert record["recipe"]["train"]["max_steps"] == 4  # the override is what ran
    assert (run_dir / "eval_worst.jsonl").read_text().count("\n") == 5

    code, out, _ = invoke(capsys, "eval", str(run_dir), "--max-rows", "3")
    assert code == 0 and "3 held-out rows" in out
    assert json.loads((run_dir / "eval.json").read_text())["rows"] == 3
    for extra, which in (((), "tuned"), (("--base",), "base")):
        code, out, err = invoke(capsys, "generate", str(run_dir), "abc", "--max-new-tokens", "5", *extra)
        assert code == 0, err
        expected = direct_answer(run_dir, home, which, [{"role": "user", "content": "abc"}], 5)
        assert expected and out == expected + "\n"  # the answer as is (it may be only whitespace)

    code, _, err = invoke(capsys, "train", str(recipe_path))
    assert code == 2 and "already holds a run" in one_error_line(err)


def direct_answer(run_dir, home, which, messages, max_new_tokens):
    """What the run's model answers, greedy, computed without the CLI."""
    from tunelab.cli.run import reply
    from tunelab.run.models import open_run_models

    models = open_run_models(run_dir, home, "cpu")
    inference = models.inference()
    model = inference.load_tuned() if which == "tuned" else inference.load_base()
    return reply(model, models.tokenizer(), messages, max_new_tokens, 0.0, models.placement)


def test_eval_of_a_folder_that_is_not_a_run(capsys, tmp_path):
    code, _, err = invoke(capsys, "eval", str(tmp_path))
    assert code == 2 and "not a tunelab run folder" in one_error_line(err)


def test_models_list(capsys, home):
    code, out, _ = invoke(capsys, "models", "list")
    assert code == 0 and "smollm2-135m-instruct" in out


def test_chat_answers_each_message_until_exit(capsys, monkeypatch, tmp_path, home, tiny_checkpoint, reverse_data):
    import io

    recipe_path = write_recipe(tmp_path, tiny_recipe(tmp_path, tiny_checkpoint, reverse_data,
                                                     train={"max_steps": 2, "save_every": 2}))
    assert invoke(capsys, "train", str(recipe_path), "--no-eval")[0] == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("abc\n/reset\nxyz\n/exit\n"))
    code, out, err = invoke(capsys, "chat", str(tmp_path / "run"), "--max-new-tokens", "4")
    assert code == 0, err
    assert out.count("model>") == 2
    # /reset forgot "abc": the second answer is the answer to "xyz" alone
    run = tmp_path / "run"
    first, second = (direct_answer(run, home, "tuned", [{"role": "user", "content": text}], 4)
                     for text in ("abc", "xyz"))
    assert out.split("model> ")[1:] == [first + "\nyou> you> ", second + "\nyou> "]
