"""`tunelab compare-methods` on a tiny model: every method trained and evaluated as `tunelab eval` does (intervals,
forgetting), the base model run once, the table written to a file."""

import json

import yaml

from tests.conftest import tiny_recipe
from tests.unit.test_cli import invoke, one_error_line


def test_compare_methods_evaluates_every_method_like_tunelab_eval(capsys, tmp_path, home, tiny_checkpoint,
                                                                 reverse_data):
    recipe = tiny_recipe(tmp_path, tiny_checkpoint, reverse_data)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "cmp"
    code, stdout, err = invoke(capsys, "compare-methods", str(path), "--methods", "prompt,lora", "--steps", "3",
                               "--out", str(out), "--eval-rows", "3")
    assert code == 0, err
    result = json.loads((out / "methods.json").read_text())
    rows = {row["method"]: row for row in result["rows"]}
    assert list(rows) == ["prompt", "lora", "base"]
    prompt = rows["prompt"]
    assert "error" not in prompt, prompt
    assert prompt["steps"] == 3 and prompt["tokens_per_second"] > 0 and prompt["peak_rss_mib"] > 0
    assert prompt["trainable"] == 20 * 32  # 20 virtual tokens of the tiny model's width
    assert prompt["padding_free"] is False
    for name in ("prompt", "lora"):  # each method's run holds the evaluation `tunelab eval` writes
        saved = json.loads((out / name / "eval.json").read_text())
        assert saved == rows[name]["evaluation"] and saved["rows"] == 3
        low, high = saved["intervals"]["delta"]["loss"]
        assert low <= saved["delta"]["loss"] <= high
        assert saved["forgetting"]["probes"]["general_text"]["rows"] == 340
    # the base model ran once: the second method scored against the first one's base outputs
    first, second = (json.loads((out / name / "eval" / "outputs-base.json").read_text())
                     for name in ("prompt", "lora"))
    assert first == second and rows["lora"]["evaluation"]["base"] == rows["prompt"]["evaluation"]["base"]
    assert rows["base"]["metrics"] == rows["prompt"]["evaluation"]["base"]
    assert "exact_match" in rows["base"]["metrics"]
    table = (out / "methods.md").read_text()
    assert "| prompt |" in table and "| lora |" in table and "| base |" in table and "3 steps" in table
    loss = rows["lora"]["evaluation"]["tuned"]["loss"]
    assert f"{loss:.4f} [" in table  # values are shown with their intervals
    assert "prompt" in stdout and "written" in stdout

    code, _, err = invoke(capsys, "compare-methods", str(path), "--methods", "lora", "--out", str(out))
    assert code == 2 and "already holds a comparison" in one_error_line(err)


def test_compare_methods_refuses_an_unknown_method(capsys, tmp_path, home, tiny_checkpoint, reverse_data):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path, tiny_checkpoint, reverse_data)))
    code, _, err = invoke(capsys, "compare-methods", str(path), "--methods", "lora,lorax")
    assert code == 2 and "unknown method 'lorax'" in one_error_line(err)
