"""`tunelab compare-methods` on a tiny model: every method's row and the base's, written to a file."""

import json

import yaml

from tests.conftest import tiny_recipe
from tests.unit.test_cli import invoke, one_error_line


def test_compare_methods_writes_one_row_per_method_and_the_base(capsys, tmp_path, home, tiny_checkpoint,
                                                                reverse_data):
    recipe = tiny_recipe(tmp_path, tiny_checkpoint, reverse_data)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "cmp"
    code, stdout, err = invoke(capsys, "compare-methods", str(path), "--methods", "prompt", "--steps", "3",
                               "--out", str(out), "--eval-rows", "3")
    assert code == 0, err
    result = json.loads((out / "methods.json").read_text())
    rows = {row["method"]: row for row in result["rows"]}
    assert list(rows) == ["prompt", "base"]
    prompt = rows["prompt"]
    assert "error" not in prompt, prompt
    assert prompt["steps"] == 3 and prompt["tokens_per_second"] > 0 and prompt["peak_rss_mib"] > 0
    assert prompt["trainable"] == 20 * 32  # 20 virtual tokens of the tiny model's width
    assert prompt["padding_free"] is False and prompt["metrics"]["rows"] == 3 and prompt["metrics"]["loss"] > 0
    assert rows["base"]["metrics"]["rows"] == 3 and "exact_match" in rows["base"]["metrics"]
    table = (out / "methods.md").read_text()
    assert "| prompt |" in table and "| base |" in table and "3 steps" in table
    assert "prompt" in stdout and "written" in stdout

    code, _, err = invoke(capsys, "compare-methods", str(path), "--methods", "lora", "--out", str(out))
    assert code == 2 and "already holds a comparison" in one_error_line(err)


def test_compare_methods_refuses_an_unknown_method(capsys, tmp_path, home, tiny_checkpoint, reverse_data):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path, tiny_checkpoint, reverse_data)))
    code, _, err = invoke(capsys, "compare-methods", str(path), "--methods", "lora,lorax")
    assert code == 2 and "unknown method 'lorax'" in one_error_line(err)
