"""A candidate run against the version in service (evaluate/versus.py) on a tiny model: two sft runs on one tiny base,
one trained 60 steps on the reverse-the-word rows, one a single step at a tiny learning rate (next to the base), both
with the same test split. The good one is not worse than the weak one, the weak one significantly worse than it;
with no incumbent the base model answers (its outputs from the run's own evaluation reused); rows given are the rows
used; the incumbent's outputs are reused on the same rows only; runs of another base model or task are refused in one
line; `not_worse_check` on its own at its boundaries."""

import json

import pytest

from tests.conftest import reverse_rows, tiny_recipe, train_recipe, write_jsonl
from tests.tiny import save_tiny_checkpoint
from tunelab.config.load import validate_recipe
from tunelab.data.dataset import read_splits
from tunelab.errors import TunelabError
from tunelab.evaluate.versus import compare_to_incumbent, not_worse_check
from tunelab.run.models import open_run_models


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_checkpoint):
    """A good run (60 steps) and a weak one (one step, tiny learning rate), judged by loss (exact match is 0 for both
    at this size; loss tells them apart on every row)."""
    root = tmp_path_factory.mktemp("versus")
    home = root / "home"
    data = write_jsonl(root / "reverse.jsonl", reverse_rows(60))

    def train(name, **train_options):
        recipe = tiny_recipe(root / name, tiny_checkpoint, data, train=train_options, eval={"bootstrap": 300})
        recipe["objective"] = {"metric": "loss", "max": 100.0}
        run = train_recipe(recipe, home)
        return open_run_models(run.root, home, "cpu")

    good = train("good", max_steps=60, lr=3e-2)
    bad = train("bad", max_steps=1, lr=1e-3)
    return {"root": root, "home": home, "good": good, "bad": bad, "checkpoint": tiny_checkpoint}


def said():
    lines = []
    return lines, lines.append


def test_the_better_run_is_not_worse_than_the_worse_one_in_service(runs):
    lines, say = said()
    comparison = compare_to_incumbent(runs["good"], runs["bad"], None, say)
    assert comparison.metric == "loss" and comparison.label == "test"
    assert comparison.rows == len(read_splits(runs["good"].run.data).test) == 6
    assert comparison.change < 0 and comparison.candidate < comparison.incumbent  # less loss: better
    assert comparison.interval is not None and comparison.interval[1] < 0  # significantly better
    assert comparison.not_worse.ok, comparison.not_worse.text
    assert comparison.not_worse.text.endswith("is not worse")
    assert comparison.incumbent_name == str(runs["bad"].run.root)
    assert comparison.forgetting is not None and "general_text" in comparison.forgetting.probes
    folder = runs["good"].run.eval_dir / "versus-test"
    assert comparison.folder == folder
    assert not runs["good"].run.eval_json.exists()  # the run's own evaluation is not written
    examples = [json.loads(line) for line in (folder / "examples.jsonl").read_text().splitlines()]
    assert len(examples) == 6 and {"candidate", "incumbent", "candidate_loss", "incumbent_loss"} <= set(examples[0])
    assert not any(key.startswith(("base", "tuned")) for key in examples[0])
    written = json.loads((folder / "comparison.json").read_text())
    assert written["not_worse"]["ok"] and written["evaluation"]["tuned"]["loss"] == pytest.approx(comparison.candidate)
    assert (folder / "outputs-incumbent.json").is_file() and (folder / "outputs-candidate.json").is_file()
    assert any("is not worse" in line for line in lines)


def test_the_worse_run_is_significantly_worse_than_the_better_one_in_service(runs):
    comparison = compare_to_incumbent(runs["bad"], runs["good"], None, lambda _: None)
    assert comparison.change > 0 and comparison.interval[0] > 0
    assert not comparison.not_worse.ok
    assert comparison.not_worse.text.startswith("loss change vs in service +")
    assert comparison.not_worse.text.endswith("is significantly worse")


def test_no_incumbent_compares_with_the_base_reusing_the_runs_own_base_outputs(runs):
    from tunelab.evaluate.evaluator import evaluate_run

    good = runs["good"]
    evaluation = evaluate_run(good, good.recipe, lambda _: None)
    lines, say = said()
    comparison = compare_to_incumbent(good, None, None, say, label="base-check")
    assert comparison.incumbent_name == "base"
    assert comparison.incumbent == pytest.approx(evaluation.base["loss"])
    assert comparison.candidate == pytest.approx(evaluation.tuned["loss"])
    assert comparison.change < 0 and comparison.not_worse.ok
    assert any("outputs are reused" in line for line in lines)
    assert comparison.folder == good.run.eval_dir / "versus-base-check"
    assert json.loads(good.run.eval_json.read_text())["tuned"]["loss"] == pytest.approx(evaluation.tuned["loss"])


def test_rows_given_are_the_rows_answered(runs, tmp_path):
    rows = read_splits(runs["good"].run.data).train[:4]
    comparison = compare_to_incumbent(runs["good"], runs["bad"], rows, lambda _: None, label="feedback",
                                      folder=tmp_path / "versus")
    assert comparison.rows == 4 and comparison.label == "feedback"
    examples = [json.loads(line) for line in (tmp_path / "versus" / "examples.jsonl").read_text().splitlines()]
    assert [row["source"] for row in examples] == [row.where for row in rows]
    assert comparison.change < 0 and comparison.not_worse.ok


def test_the_incumbents_outputs_are_reused_on_the_same_rows_only(runs, tmp_path):
    from tunelab.evaluate.outputs import load_outputs

    first = compare_to_incumbent(runs["good"], runs["bad"], None, lambda _: None, folder=tmp_path / "first")
    earlier = load_outputs(tmp_path / "first" / "outputs-incumbent.json")
    lines, say = said()
    again = compare_to_incumbent(runs["good"], runs["bad"], None, say, folder=tmp_path / "again",
                                 incumbent_outputs=earlier)
    assert any("outputs are reused" in line for line in lines)
    assert again.incumbent == first.incumbent and again.change == first.change
    lines, say = said()
    fewer = compare_to_incumbent(runs["good"], runs["bad"], None, say, max_rows=3, folder=tmp_path / "fewer",
                                 incumbent_outputs=earlier)
    assert fewer.rows == 3 and not any("outputs are reused" in line for line in lines)


def test_a_run_on_another_base_model_is_refused(runs, tmp_path):
    other = save_tiny_checkpoint(tmp_path / "other-llama", seed=1)
    bad = runs["bad"]
    recipe = bad.recipe.model_dump(mode="json")
    recipe["model"]["name"] = str(other)
    moved = type(bad)(bad.run, bad.record, validate_recipe(recipe), bad.home, bad.placement)
    with pytest.raises(TunelabError, match="different base models") as error:
        compare_to_incumbent(runs["good"], moved, None, lambda _: None)
    assert "\n" not in str(error.value)


def test_a_run_of_another_task_is_refused(runs):
    bad = runs["bad"]
    recipe = bad.recipe.model_dump(mode="json")
    recipe["task"] = {"name": "dpo"}
    other = type(bad)(bad.run, bad.record, validate_recipe(recipe), bad.home, bad.placement)
    with pytest.raises(TunelabError, match="a dpo run and a sft run"):
        compare_to_incumbent(runs["good"], other, None, lambda _: None)


@pytest.mark.parametrize("label", ["", "../up", "a/b"])
def test_a_label_that_is_no_folder_name_is_refused(runs, label):
    with pytest.raises(TunelabError, match="versus label"):
        compare_to_incumbent(runs["good"], runs["bad"], None, lambda _: None, label=label)


def test_the_runs_own_eval_folder_is_refused(runs):
    with pytest.raises(TunelabError, match="the run's own evaluation"):
        compare_to_incumbent(runs["good"], runs["bad"], None, lambda _: None, folder=runs["good"].run.eval_dir)


# ---- not_worse_check, a pure function -------------------------------------------------------------------------------


def test_an_interval_below_zero_is_significantly_worse():
    check = not_worse_check("json_match", -0.031, [-0.060, -0.004])
    assert not check.ok and check.check == "not_worse"
    assert check.text == "json_match change vs in service -3.1 pts [-6.0, -0.4 pts] is significantly worse"


def test_an_interval_touching_zero_is_not_significant_but_the_point_change_still_counts():
    assert not_worse_check("exact_match", 0.0, [-0.05, 0.0]).ok  # no change, interval reaching zero
    check = not_worse_check("exact_match", -0.01, [-0.05, 0.0])
    assert not check.ok and check.text.endswith("loses more than max_regression 0.0 pts")
    assert not_worse_check("exact_match", -0.01, [-0.05, 0.0], max_regression=0.01).ok  # exactly the allowance
    assert not not_worse_check("exact_match", -0.0101, [-0.05, 0.0], max_regression=0.01).ok


def test_an_allowance_never_excuses_a_significant_drop():
    check = not_worse_check("exact_match", -0.02, [-0.04, -0.001], max_regression=0.05)
    assert not check.ok and check.text.endswith("is significantly worse")


def test_a_lower_is_better_metric_is_judged_the_other_way():
    assert not_worse_check("loss", -0.5, [-0.9, -0.1]).ok  # less loss: better
    assert not not_worse_check("loss", 0.5, [0.1, 0.9]).ok
    assert not_worse_check("loss", 0.0, [0.0, 0.3]).ok  # the interval's low end at zero: not significantly worse
    check = not_worse_check("loss", 0.02, [-0.1, 0.3], max_regression=0.01)
    assert not check.ok and check.actual == pytest.approx(-0.02) and check.required == -0.01


def test_without_an_interval_the_point_change_decides():
    assert not_worse_check("bleu", 0.0, None).ok
    check = not_worse_check("bleu", -1.5, None)
    assert not check.ok and check.text == "bleu change vs in service -1.50 loses more than max_regression 0.00"
    assert not not_worse_check("bleu", float("nan"), None).ok


def test_a_metric_shown_not_judged_never_fails():
    from tunelab.metrics.registry import METRICS

    shown = next(name for name, metric in METRICS.items() if not metric.judged)
    check = not_worse_check(shown, -100.0, [-200.0, -50.0])
    assert check.ok and "shown, not judged" in check.text
