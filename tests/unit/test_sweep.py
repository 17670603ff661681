"""`tunelab sweep` on a tiny model: the space file checked line by line, trials as run folders, the objective on
the validation rows (the test rows only for the best trial, at the end), the study resumed from its SQLite file,
median pruning, and a best recipe that reproduces the best trial."""

import json

import pytest
import yaml

from tests.conftest import tiny_recipe
from tests.unit.test_cli import invoke, one_error_line


@pytest.fixture
def recipe_path(tmp_path, tiny_checkpoint, reverse_data):
    # eval_every=2 over 4 steps: validations at steps 2 and 4, where the pruner compares trials
    recipe = tiny_recipe(tmp_path, tiny_checkpoint, reverse_data,
                         train={"max_steps": 4, "eval_every": 2, "save_every": 4, "lr": 5e-3},
                         eval={"bootstrap": 50, "forgetting": {"enabled": False}, "max_rows": 4})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def write_space(tmp_path, space, name="space.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(space))
    return path


LR_SPACE = {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}


def test_space_file_errors_are_one_line_each(capsys, tmp_path, home, recipe_path):
    space = write_space(tmp_path, {
        "train.lrr": {"type": "float", "low": 1e-4, "high": 1e-2},  # unknown key: the schema suggests train.lr
        "method.r": {"type": "int", "low": 8, "high": 4},  # bounds reversed
        "train.warmup": {"type": "float", "low": 0.0, "high": 0.1, "log": True},  # log from 0
        "train.batch_size": {"type": "int", "low": 0, "high": 4},  # the schema refuses 0
        "data.max_length": {"type": "integer", "low": 1, "high": 2},
        "method.alpha": {"type": "categorical", "choices": []},
    })
    code, _, err = invoke(capsys, "sweep", str(recipe_path), "--space", str(space), "--trials", "2",
                          "--dir", str(tmp_path / "sw"))
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 6, err
    text = "\n".join(lines)
    assert "train.lrr: unknown key 'train.lrr'; did you mean 'train.lr'?" in text
    assert "method.r: low 8 must be below high 4" in text
    assert "train.warmup: log: true needs low > 0" in text
    assert "train.batch_size: train.batch_size: Input should be greater than or equal to 1" in text
    assert "data.max_length: type: 'integer' is not one of float, int, categorical" in text
    assert "method.alpha: categorical: give a non-empty list of choices" in text
    assert not (tmp_path / "sw").exists()  # nothing was started


def test_sweep_needs_validation_rows(capsys, tmp_path, home, recipe_path):
    space = write_space(tmp_path, LR_SPACE)
    code, _, err = invoke(capsys, "sweep", str(recipe_path), "data.split.validation=0", "--space", str(space),
                          "--trials", "1", "--dir", str(tmp_path / "sw"))
    assert code == 2 and "no validation rows" in err and len(err.strip().splitlines()) == 1


def test_sweep_trials_are_run_folders_scored_on_validation_and_resume(capsys, tmp_path, home, recipe_path):
    import optuna

    space = write_space(tmp_path, LR_SPACE)
    folder = tmp_path / "sw"
    code, out, err = invoke(capsys, "sweep", str(recipe_path), "--space", str(space), "--trials", "2",
                            "--dir", str(folder), "--prune-after", "99")
    assert code == 0, err
    first = json.loads((folder / "sweep.json").read_text())
    assert [row["state"] for row in first["trials"]] == ["complete", "complete"]
    assert first["trials"][0]["params"] == {"train.lr": 5e-3}  # trial 0: the recipe's own value
    assert first["metric"] == "validation loss"
    started = {row["trial"]: (folder / "trials" / f"trial-{row['trial']:04d}" / "run.json").stat().st_mtime_ns
               for row in first["trials"]}
    for row in first["trials"]:  # each trial a normal run folder, trained with its own lr
        run = folder / "trials" / f"trial-{row['trial']:04d}"
        record = json.loads((run / "run.json").read_text())
        assert record["status"] == "completed" and record["recipe"]["train"]["lr"] == row["params"]["train.lr"]
        # the objective: the validation loss at the last step (the trainer's own, reported to Optuna)
        assert row["validation_losses"]["4"] == pytest.approx(row["value"])
        assert record["training"]["final_eval_loss"] == pytest.approx(row["value"])
    best = first["best"]["trial"]
    for row in first["trials"]:  # the test rows were evaluated for the best trial only
        run = folder / "trials" / f"trial-{row['trial']:04d}"
        assert (run / "eval.json").exists() == (row["trial"] == best)
    test = json.loads((folder / "trials" / f"trial-{best:04d}" / "eval.json").read_text())
    assert first["test"]["trial"] == best and first["test"]["rows"] == test["rows"] == 4
    assert not any("split" in note for note in test["notes"])  # the test split's evaluation, not a validation one

    code, out, err = invoke(capsys, "sweep", str(recipe_path), "--space", str(space), "--trials", "5",
                            "--dir", str(folder), "--prune-after", "99")
    assert code == 0, err
    assert "3 trial(s) to run (2 already in" in out
    study = optuna.load_study(study_name="tunelab-sweep", storage=f"sqlite:///{folder / 'study.db'}")
    assert len(study.trials) == 5 and all(trial.state.name == "COMPLETE" for trial in study.trials)
    for number, mtime in started.items():  # the first two were not run again
        assert (folder / "trials" / f"trial-{number:04d}" / "run.json").stat().st_mtime_ns == mtime
    result = json.loads((folder / "sweep.json").read_text())
    assert [row["trial"] for row in result["trials"]] == [0, 1, 2, 3, 4]
    assert [row["params"] for row in result["trials"][:2]] == [row["params"] for row in first["trials"]]
    values = [row["value"] for row in result["trials"]]
    assert result["best"]["value"] == min(values)
    page = (folder / "sweep.html").read_text()
    assert "<svg" in page and "validation loss per trial" in page and "log10 train.lr" in page
    assert page.count("<tr>") >= 6

    # a resumed study keeps its recipe: trials trained otherwise would not be comparable
    code, _, err = invoke(capsys, "sweep", str(recipe_path), "train.max_steps=5", "--space", str(space),
                          "--trials", "6", "--dir", str(folder))
    assert code == 2 and "started with another recipe.train.max_steps (4 -> now 5)" in one_error_line(err)

    # the best recipe reproduces the best trial's values and trains with `tunelab train`
    from tunelab.config.load import load_recipe

    best_recipe = load_recipe(folder / "best.yaml")
    assert best_recipe.train.lr == result["best"]["params"]["train.lr"]
    trial_recipe = json.loads((folder / "trials" / f"trial-{result['best']['trial']:04d}" / "run.json").read_text())
    best_data = best_recipe.model_dump(mode="json")
    assert {**best_data, "output": None} == {**trial_recipe["recipe"], "output": None}


def test_a_trial_far_worse_than_the_median_is_pruned(capsys, tmp_path, home, recipe_path):
    import optuna

    space = write_space(tmp_path, {"train.lr": {"type": "categorical", "choices": [5e-3, 3.0]}})
    folder = tmp_path / "sw"
    code, _, err = invoke(capsys, "sweep", str(recipe_path), "--space", str(space), "--trials", "1",
                          "--dir", str(folder), "--prune-after", "1")
    assert code == 0, err
    study = optuna.load_study(study_name="tunelab-sweep", storage=f"sqlite:///{folder / 'study.db'}")
    study.ask()  # a trial left running, as by a sweep killed mid-trial: marked failed, not counted
    study.enqueue_trial({"train.lr": 3.0})  # a learning rate that wrecks the model at once
    code, out, err = invoke(capsys, "sweep", str(recipe_path), "--space", str(space), "--trials", "2",
                            "--dir", str(folder), "--prune-after", "1")
    assert code == 0, err
    result = json.loads((folder / "sweep.json").read_text())
    assert [row["state"] for row in result["trials"]] == ["complete", "failed", "pruned"]
    assert result["trials"][1]["error"] == "interrupted (the sweep was stopped)"
    pruned = result["trials"][2]
    assert pruned["params"] == {"train.lr": 3.0} and pruned["pruned_at_step"] == 2
    assert pruned["validation_losses"]["2"] > result["trials"][0]["validation_losses"]["2"]
    record = json.loads((folder / "trials" / "trial-0002" / "run.json").read_text())
    assert record["training"]["steps"] == 2  # training stopped at the pruned validation, not at max_steps
    assert "pruned at step 2" in out


def test_a_recipe_objective_is_measured_on_the_validation_rows(capsys, tmp_path, home, recipe_path):
    space = write_space(tmp_path, LR_SPACE)
    folder = tmp_path / "sw"
    code, out, err = invoke(capsys, "sweep", str(recipe_path), "objective.metric=exact_match", "objective.min=0",
                            "--space", str(space), "--trials", "2", "--dir", str(folder), "--prune-after", "99")
    assert code == 0, err
    result = json.loads((folder / "sweep.json").read_text())
    assert result["metric"] == "exact_match" and result["direction"] == "maximize"
    best = result["best"]["trial"]
    assert result["best"]["value"] == max(row["value"] for row in result["trials"])
    for row in result["trials"]:
        run = folder / "trials" / f"trial-{row['trial']:04d}"
        evaluation = json.loads((run / "eval.json").read_text())
        validation = [json.loads(line) for line in (run / "data" / "validation.jsonl").read_text().splitlines()]
        test = [json.loads(line) for line in (run / "data" / "test.jsonl").read_text().splitlines()]
        examples = [json.loads(line) for line in (run / "eval" / "examples.jsonl").read_text().splitlines()]
        if row["trial"] == best:  # evaluated again at the end, on the test rows: the figure reported
            assert evaluation["rows"] == min(4, len(test)) and result["test"]["rows"] == evaluation["rows"]
        else:  # scored on the validation rows only: the test rows never seen
            assert "evaluated on the validation split, not the test split" in evaluation["notes"]
            assert evaluation["rows"] == min(4, len(validation))
            assert row["value"] == evaluation["tuned"]["exact_match"]
            lines = {int(example["source"].rsplit(":", 1)[1]) for example in examples}
            assert lines <= {item["line"] for item in validation}
            assert not lines & {item["line"] for item in test}
