"""`tunelab compare-models` on two tiny models of different sizes: each a run folder evaluated as `tunelab eval`
does, its own base metrics, the table, and the verdict naming the smallest model that meets the objective."""

import json

import yaml

from tests.conftest import tiny_recipe
from tests.tiny import save_tiny_checkpoint
from tests.unit.test_cli import invoke, one_error_line


def test_compare_models_puts_two_sizes_side_by_side(capsys, tmp_path, home, tiny_checkpoint, reverse_data):
    bigger = save_tiny_checkpoint(tmp_path / "tiny-wide", hidden_size=64, seed=1)
    recipe = tiny_recipe(tmp_path, tiny_checkpoint, reverse_data, eval={"bootstrap": 50, "max_rows": 3},
                         objective={"metric": "loss", "max": 100.0})  # met by both: the smaller one wins
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "cmp"
    code, stdout, err = invoke(capsys, "compare-models", str(path), "--models", f"{bigger},{tiny_checkpoint}",
                               "--steps", "2", "--out", str(out))
    assert code == 0, err
    result = json.loads((out / "models.json").read_text())
    rows = {row["method"]: row for row in result["rows"]}
    assert list(rows) == ["tiny-wide", "tiny-llama"]
    for label, model in (("tiny-wide", bigger), ("tiny-llama", tiny_checkpoint)):
        row = rows[label]
        assert "error" not in row, row
        assert row["model"] == str(model) and row["steps"] == 2 and row["peak_rss_mib"] > 0
        record = json.loads((out / label / "run.json").read_text())  # a normal run folder, on its own base
        assert record["base_model"]["path"] == str(model) and record["status"] == "completed"
        saved = json.loads((out / label / "eval.json").read_text())
        assert saved == row["evaluation"] and saved["rows"] == 3 and saved["objective"]["met"]
    assert rows["tiny-wide"]["total"] > rows["tiny-llama"]["total"]
    # the plan's estimate, made before each model trained: the wider model is planned bigger
    assert rows["tiny-wide"]["plan_peak_mib"] > rows["tiny-llama"]["plan_peak_mib"] > 0
    # each model has its own base: the base metrics differ between rows
    assert rows["tiny-wide"]["evaluation"]["base"]["loss"] != rows["tiny-llama"]["evaluation"]["base"]["loss"]
    assert result["verdict"].startswith("the smallest model that meets your needs: tiny-llama (")
    table = (out / "models.md").read_text()
    assert "| tiny-wide |" in table and "| tiny-llama |" in table and "loss tuned" in table and "| met |" in table \
        and "plan MiB" in table
    assert "smallest model that meets your needs: tiny-llama" in " ".join(stdout.split())


def test_compare_models_without_objective_and_with_a_bad_name(capsys, tmp_path, home, tiny_checkpoint,
                                                              reverse_data):
    from tunelab.compare_models import verdict

    rows = [{"method": "big", "total": 200, "evaluation": {
                "primary_metric": "exact_match", "objective": None, "tuned": {"exact_match": 0.8},
                "intervals": {"tuned": {"exact_match": [0.7, 0.9]}}}},
            {"method": "small", "total": 100, "evaluation": {
                "primary_metric": "exact_match", "objective": None, "tuned": {"exact_match": 0.7},
                "intervals": {"tuned": {"exact_match": [0.6, 0.85]}}}},
            {"method": "tiny", "total": 50, "evaluation": {
                "primary_metric": "exact_match", "objective": None, "tuned": {"exact_match": 0.2},
                "intervals": {"tuned": {"exact_match": [0.1, 0.3]}}}}]
    line = verdict(rows)
    assert "not significantly worse than the best (big" in line and "is small (100 parameters" in line

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path, tiny_checkpoint, reverse_data)))
    code, _, err = invoke(capsys, "compare-models", str(path), "--models", f"{tiny_checkpoint},no-such-model",
                          "--out", str(tmp_path / "cmp"))
    assert code == 2 and "--models: 'no-such-model' is not a built-in model" in one_error_line(err)
    assert not (tmp_path / "cmp").exists()
