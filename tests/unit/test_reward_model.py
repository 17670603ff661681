"""A reward model on a tiny random model: a scalar head learns to score planted pairs' chosen answer (the prompt
reversed) above the rejected one (random letters); resume equivalence; the head is saved with the adapter."""

import json

import pytest
from rich.console import Console

from tests.conftest import run_record, train_recipe
from tests.unit.test_dpo import dpo_recipe, pairs  # noqa: F401 (a fixture)
from tests.unit.test_training import StopAt, adapter_weights, assert_same_weights
from tunelab.errors import TunelabError
from tunelab.train.lifecycle import evaluate_and_record

QUIET = Console(quiet=True)


def reward_recipe(tmp_path, checkpoint, data, **sections):
    recipe = dpo_recipe(tmp_path, checkpoint, data, **sections)
    recipe["task"] = {"name": "reward_model"}
    return recipe


def test_the_reward_model_ranks_held_out_planted_pairs_above_chance(tiny_checkpoint, pairs, tmp_path, home):  # noqa: F811
    recipe = reward_recipe(tmp_path, tiny_checkpoint, pairs, train={"max_steps": 30, "lr": 1e-2, "batch_size": 8,
                                                                    "save_every": 30, "eval_every": 30})
    run_dir = train_recipe(recipe, home)
    record = run_record(run_dir)
    assert record.task == "reward_model" and record.status == "completed"
    assert record.data.splits["train"].kept == 56
    rows = [json.loads(line) for line in run_dir.train_log.read_text().splitlines()]
    accuracies = [row["accuracy"] for row in rows if "accuracy" in row]  # TRL's training reward accuracy
    assert sum(accuracies[-5:]) / 5 > 0.8
    assert json.loads((run_dir.model / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    evaluation = evaluate_and_record(run_dir.root, home, QUIET, "cpu", overrides=["objective.metric=reward_accuracy",
                                                                                 "objective.min=0.75"])
    assert evaluation.kind == "preference" and evaluation.primary_metric == "preference_accuracy"
    assert evaluation.rows == 16 and evaluation.forgetting.measure == "drift"
    assert evaluation.tuned["preference_accuracy"] >= 0.75 > evaluation.base["preference_accuracy"]
    assert evaluation.tuned["loss"] < evaluation.base["loss"]
    assert evaluation.objective.met
    examples = [json.loads(line) for line in run_dir.eval_examples.read_text().splitlines()]
    assert all(row["tuned_correct"] == (row["tuned_margin"] > 0) for row in examples)


def test_reward_model_resume_gives_the_same_weights(tiny_checkpoint, pairs, tmp_path, home):  # noqa: F811
    whole = train_recipe(reward_recipe(tmp_path / "a", tiny_checkpoint, pairs), home)
    recipe = reward_recipe(tmp_path / "b", tiny_checkpoint, pairs)
    train_recipe(recipe, home, callbacks=(StopAt(3),))
    resumed = train_recipe(recipe, home, resume=True)
    assert run_record(resumed).training.steps == 6
    weights = adapter_weights(whole)
    assert any("score" in name for name in weights)  # the head is trained and saved with the adapter
    assert_same_weights(weights, adapter_weights(resumed), atol=1e-6)


def test_a_reward_model_writes_no_text(tiny_checkpoint, pairs, tmp_path, home):  # noqa: F811
    from tunelab.run.models import open_run_models

    run_dir = train_recipe(reward_recipe(tmp_path, tiny_checkpoint, pairs, train={"max_steps": 1}), home)
    inference = open_run_models(run_dir.root, home, "cpu").inference()
    assert not inference.writes_text and "reward model" in inference.instead


def test_a_dpo_option_on_a_reward_model_is_one_line(tiny_checkpoint, pairs, tmp_path):  # noqa: F811
    from tunelab.config.load import validate_recipe

    recipe = reward_recipe(tmp_path, tiny_checkpoint, pairs)
    recipe["task"]["beta"] = 0.1
    with pytest.raises(TunelabError, match="task.beta") as error:
        validate_recipe(recipe)
    assert "\n" not in str(error.value).strip()


@pytest.mark.parametrize("method", [{"name": "prompt"}, {"name": "full"}])
def test_a_reward_model_trains_and_is_evaluated_under_other_methods(method, tiny_checkpoint, pairs, tmp_path,  # noqa: F811
                                                                    home):
    """Prompt tuning puts virtual tokens in front of each row: the drift probe reads the row's own states."""
    recipe = reward_recipe(tmp_path, tiny_checkpoint, pairs, method=method,
                           train={"max_steps": 2, "save_every": 2, "eval_every": 2})
    evaluation = evaluate_and_record(train_recipe(recipe, home).root, home, QUIET, "cpu")
    assert evaluation.forgetting.measure == "drift" and evaluation.forgetting.value >= 0
    assert 0 <= evaluation.tuned["preference_accuracy"] <= 1
