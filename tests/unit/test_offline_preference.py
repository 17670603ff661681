"""The offline preference tasks on a tiny random model with planted pairs (the chosen answer is the prompt reversed,
the rejected one random letters, as in test_dpo): orpo and simpo (no reference model) and kto (unpaired feedback,
or pairs it unpairs). Each task's loss falls and the tuned model ranks held-out pairs right; resume gives the weights
of an uninterrupted run; the model trained is the base plus one adapter; bad input stops in one line."""

import json

import pytest
from rich.console import Console

from tests.conftest import run_record, tiny_recipe, train_recipe, write_jsonl
from tests.unit.test_dpo import logged_losses, planted_pairs
from tests.unit.test_training import StopAt, adapter_weights, assert_same_weights
from tunelab.config.load import validate_recipe
from tunelab.errors import TunelabError
from tunelab.train.lifecycle import evaluate_and_record

QUIET = Console(quiet=True)

# task section, learning rate, the share of its first loss the loss falls below in 40 steps on the planted pairs
# (ORPO's loss is mostly the supervised loss on the chosen answer, which a tiny model learns slowly)
LEARNS = {
    "orpo": ({"name": "orpo", "beta": 0.5}, 2e-2, 0.95),
    "simpo": ({"name": "simpo"}, 2e-2, 0.75),
}


@pytest.fixture
def pairs(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", planted_pairs(80))


def task_recipe(tmp_path, checkpoint, data, task, **sections):
    recipe = tiny_recipe(tmp_path, checkpoint, data, **sections)
    recipe["task"] = dict(task)
    recipe["data"]["split"] = {"validation": 0.1, "test": 0.2, "seed": 1}
    return recipe


def logged(run_dir, key):
    rows = [json.loads(line) for line in run_dir.train_log.read_text().splitlines()]
    return [row[key] for row in rows if key in row]


def trained_and_evaluated(tmp_path, checkpoint, data, home, task, lr):
    recipe = task_recipe(tmp_path, checkpoint, data, task, train={"max_steps": 40, "lr": lr, "batch_size": 8,
                                                                  "save_every": 40, "eval_every": 40})
    run_dir = train_recipe(recipe, home)
    return run_dir, evaluate_and_record(run_dir.root, home, QUIET, "cpu")


@pytest.mark.parametrize("name", list(LEARNS))
def test_loss_falls_and_the_tuned_model_ranks_held_out_pairs_right(name, tiny_checkpoint, pairs, tmp_path, home):
    task, lr, falls_to = LEARNS[name]
    run_dir, evaluation = trained_and_evaluated(tmp_path, tiny_checkpoint, pairs, home, task, lr)
    record = run_record(run_dir)
    assert record.task == name and record.status == "completed" and record.data.splits["train"].kept == 56
    losses = logged_losses(run_dir)
    assert sum(losses[-5:]) / 5 < falls_to * losses[0]
    margins = logged(run_dir, "rewards/margins")  # TRL's own measure of the preference term
    assert margins[-1] > margins[0] + 0.1
    assert evaluation.kind == "preference" and evaluation.primary_metric == "preference_accuracy"
    assert evaluation.rows == 16
    assert evaluation.tuned["preference_accuracy"] > max(evaluation.base["preference_accuracy"], 0.5)
    assert evaluation.tuned["mean_margin"] > evaluation.base["mean_margin"]
    assert evaluation.intervals.delta["preference_accuracy"][0] > 0  # the paired bootstrap's lower bound


@pytest.mark.parametrize("name", list(LEARNS))
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(name, tiny_checkpoint, pairs, tmp_path, home):
    task = LEARNS[name][0]
    whole = train_recipe(task_recipe(tmp_path / "a", tiny_checkpoint, pairs, task), home)
    recipe = task_recipe(tmp_path / "b", tiny_checkpoint, pairs, task)
    part = train_recipe(recipe, home, callbacks=(StopAt(3),))
    assert run_record(part).training.steps == 3
    resumed = train_recipe(recipe, home, resume=True)
    assert run_record(resumed).training.steps == 6
    assert_same_weights(adapter_weights(whole), adapter_weights(resumed), atol=1e-6)


def test_simpo_runs_as_trl_documents_it(tiny_checkpoint, pairs, tmp_path, home):
    """SimPO is CPOTrainer with loss_type simpo and no supervised term; the recipe's options reach TRL's config."""
    trainer = built_trainer(tmp_path, tiny_checkpoint, pairs, home, {"name": "simpo", "simpo_gamma": 0.8})
    assert (trainer.loss_type, trainer.cpo_alpha, trainer.beta, trainer.simpo_gamma) == ("simpo", 0.0, 2.0, 0.8)


def built_trainer(tmp_path, checkpoint, data, home, task):
    from transformers import TrainerCallback

    from tunelab.run.folder import RunDir
    from tunelab.tasks.base import TrainerParts
    from tunelab.tasks.registry import get_task
    from tunelab.train.lifecycle import build_model, set_up
    from tunelab.train.trainer import training_arguments, training_callbacks

    recipe = validate_recipe(task_recipe(tmp_path, checkpoint, data, task))
    setup = set_up(recipe, home, QUIET, resume=False, overwrite=False, device="cpu")
    run = RunDir(tmp_path / "run")
    arguments = training_arguments(recipe.train, run, setup.placement, has_validation=True)
    parts = TrainerParts(build_model(setup), setup.tokenizer, setup.data, arguments,
                         training_callbacks(recipe.train, run, TrainerCallback()))
    return get_task(task["name"]).build_trainer(parts)


@pytest.mark.parametrize("task", [{"name": "orpo"}, {"name": "simpo"}])
def test_the_model_is_the_base_plus_one_adapter(task, tiny_checkpoint, pairs, tmp_path, home):
    """No reference model and no second copy: the trainer holds the base weights once and one adapter."""
    from tunelab.models.load import load_causal_lm

    trainer = built_trainer(tmp_path, tiny_checkpoint, pairs, home, task)
    base = sum(parameter.numel() for parameter in load_causal_lm(tiny_checkpoint).parameters())
    adapter = sum(parameter.numel() for name, parameter in trainer.model.named_parameters() if "lora_" in name)
    assert list(trainer.model.peft_config) == ["default"] and adapter > 0
    assert sum(parameter.numel() for parameter in trainer.model.parameters()) == base + adapter
    assert getattr(trainer, "ref_model", None) is None


@pytest.mark.parametrize("task, field", [({"name": "orpo", "beta": 0}, "task.beta"),
                                         ({"name": "simpo", "simpo_gamma": -1}, "task.simpo_gamma"),
                                         ({"name": "simpo", "cpo_alpha": -0.5}, "task.cpo_alpha")])
def test_an_option_out_of_range_is_one_line_naming_it(task, field, tiny_checkpoint, pairs, tmp_path):
    with pytest.raises(TunelabError) as error:
        validate_recipe(task_recipe(tmp_path, tiny_checkpoint, pairs, task))
    assert field in str(error.value) and "\n" not in str(error.value).strip()


@pytest.mark.parametrize("name", ["orpo", "simpo"])
def test_chat_rows_are_refused_in_one_line(name, tiny_checkpoint, reverse_data, tmp_path, home):
    recipe = task_recipe(tmp_path, tiny_checkpoint, reverse_data, {"name": name})
    with pytest.raises(TunelabError, match=rf"'chat' row\(s\), and task '{name}' trains on preference rows") as error:
        train_recipe(recipe, home)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()
