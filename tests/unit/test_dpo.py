"""DPO on a tiny random model: planted preference pairs (the chosen answer is the prompt reversed, the rejected one
random letters), the loss falls and the tuned model ranks held-out pairs right; resume equivalence; the reference is
the base model with the adapter disabled (no second model); one-line errors."""

import json
import random

import pytest
import torch
from rich.console import Console

from tests.conftest import run_record, tiny_recipe, train_recipe, unique_words, write_jsonl
from tests.unit.test_training import StopAt, adapter_weights, assert_same_weights
from tunelab.config.load import validate_recipe
from tunelab.errors import TunelabError
from tunelab.train.lifecycle import evaluate_and_record

QUIET = Console(quiet=True)


def planted_pairs(count, seed=0):
    rng = random.Random(seed)
    return [{"prompt": word, "chosen": word[::-1], "rejected": "".join(rng.choice("stuvwxyz") for _ in word)}
            for word in unique_words(count, "abcdefgh", seed)]


@pytest.fixture
def pairs(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", planted_pairs(80))


def dpo_recipe(tmp_path, checkpoint, data, task=None, **sections):
    recipe = tiny_recipe(tmp_path, checkpoint, data, **sections)
    recipe["task"] = {"name": "dpo", **(task or {})}
    recipe["data"]["split"] = {"validation": 0.1, "test": 0.2, "seed": 1}
    return recipe


def logged_losses(run_dir):
    rows = [json.loads(line) for line in run_dir.train_log.read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def test_dpo_loss_falls_and_the_tuned_model_ranks_held_out_pairs_right(tiny_checkpoint, pairs, tmp_path, home):
    recipe = dpo_recipe(tmp_path, tiny_checkpoint, pairs, train={"max_steps": 40, "lr": 2e-2, "batch_size": 8,
                                                                 "save_every": 40, "eval_every": 40},
                        task={"beta": 0.5})
    run_dir = train_recipe(recipe, home)
    record = run_record(run_dir)
    assert record.task == "dpo" and record.status == "completed" and record.task_state["loss_type"] == "sigmoid"
    assert record.data.splits["train"].kept == 56
    losses = logged_losses(run_dir)
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # log 2: the policy starts equal to its reference
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0]
    evaluation = evaluate_and_record(run_dir.root, home, QUIET, "cpu")
    assert evaluation.kind == "preference" and evaluation.primary_metric == "preference_accuracy"
    assert evaluation.rows == 16 and set(evaluation.metrics) >= {"loss", "preference_accuracy", "mean_margin"}
    assert evaluation.tuned["preference_accuracy"] > evaluation.base["preference_accuracy"]
    assert evaluation.tuned["preference_accuracy"] > 0.5
    assert evaluation.tuned["mean_margin"] > evaluation.base["mean_margin"]
    assert evaluation.intervals.delta["preference_accuracy"][0] > 0  # the paired bootstrap's lower bound
    assert evaluation.flips.judged_by == "preference_accuracy" and evaluation.flips.fixed > 0
    examples = [json.loads(line) for line in run_dir.eval_examples.read_text().splitlines()]
    right = [row["tuned_margin"] > 0 for row in examples]
    assert sum(right) / len(right) == evaluation.tuned["preference_accuracy"]
    assert all(row["tuned_correct"] == (row["tuned_margin"] > 0) for row in examples)


def test_dpo_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_checkpoint, pairs, tmp_path, home):
    whole = train_recipe(dpo_recipe(tmp_path / "a", tiny_checkpoint, pairs), home)
    recipe = dpo_recipe(tmp_path / "b", tiny_checkpoint, pairs)
    part = train_recipe(recipe, home, callbacks=(StopAt(3),))
    assert run_record(part).training.steps == 3
    resumed = train_recipe(recipe, home, resume=True)
    assert run_record(resumed).training.steps == 6
    assert_same_weights(adapter_weights(whole), adapter_weights(resumed), atol=1e-6)


def test_the_reference_is_the_base_model_with_the_adapter_disabled(tiny_checkpoint, pairs, tmp_path, home):
    """No second model: TRL holds no ref_model, the trained model carries one adapter, and the reference
    log-probabilities are those of the base weights (equal to a fresh load of the base checkpoint)."""
    from transformers import TrainerCallback

    from tunelab.evaluate.loss import row_losses
    from tunelab.evaluate.preference import pair_encodings
    from tunelab.models.load import load_causal_lm
    from tunelab.run.folder import RunDir
    from tunelab.tasks.base import TrainerParts
    from tunelab.tasks.dpo import build_trainer
    from tunelab.train.lifecycle import build_model, set_up
    from tunelab.train.trainer import training_arguments, training_callbacks

    recipe = validate_recipe(dpo_recipe(tmp_path, tiny_checkpoint, pairs))
    setup = set_up(recipe, home, QUIET, resume=False, overwrite=False, device="cpu")
    run = RunDir(tmp_path / "run")
    arguments = training_arguments(recipe.train, run, setup.placement, has_validation=True)
    model = build_model(setup)
    trained = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    trainer = build_trainer(TrainerParts(model, setup.tokenizer, setup.data, arguments,
                                         training_callbacks(recipe.train, run, TrainerCallback())))
    assert trainer.ref_model is None and list(trainer.model.peft_config) == ["default"]
    assert {name for name, parameter in trainer.model.named_parameters() if parameter.requires_grad} == trained
    with torch.no_grad():  # move the adapter off zero, so the policy and the reference differ
        for name, parameter in trainer.model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.5)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    reference_chosen, _ = trainer.compute_ref_log_probs(trainer.model, batch)
    chosen, _ = pair_encodings(setup.tokenizer, setup.data.splits.train[0], recipe.data.max_length)
    base = load_causal_lm(tiny_checkpoint).eval()
    base_loss, _ = row_losses(base, [chosen], setup.tokenizer.pad_token_id)[0]
    tuned_loss, _ = row_losses(trainer.model.eval(), [chosen], setup.tokenizer.pad_token_id)[0]
    assert reference_chosen.item() == pytest.approx(-base_loss, abs=1e-4)
    assert abs(tuned_loss - base_loss) > 1e-2  # the adapter is on outside the reference pass


def test_a_bad_loss_type_is_one_line_naming_the_field(tiny_checkpoint, pairs, tmp_path):
    recipe = dpo_recipe(tmp_path, tiny_checkpoint, pairs, task={"loss_type": "sigmod"})
    with pytest.raises(TunelabError) as error:
        validate_recipe(recipe)
    message = str(error.value)
    assert "task.loss_type" in message and "\n" not in message.strip()


def test_dpo_on_chat_rows_is_refused_in_one_line(tiny_checkpoint, reverse_data, tmp_path, home):
    recipe = dpo_recipe(tmp_path, tiny_checkpoint, reverse_data)
    with pytest.raises(TunelabError, match=r"'chat' row\(s\), and task 'dpo' trains on preference rows; use task: "
                                           r"sft") as error:
        train_recipe(recipe, home)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def test_preference_metrics_by_hand_and_where_they_fit():
    from tunelab.metrics import registry

    inputs = registry.RowInputs(["a", "b", "c", "d"], ["a", "x", "c", "y"], margins=[2.0, -1.0, 0.5, 0.0])
    values = registry.scores(registry.row_statistics(["preference_accuracy", "mean_margin"], inputs))
    assert values == {"preference_accuracy": 0.5, "mean_margin": pytest.approx(0.375)}  # a zero margin is no win
    assert registry.default_metrics("preference", ["a"]) == ["preference_accuracy", "mean_margin"]
    with pytest.raises(TunelabError, match=r"'bleu' does not fit preference rows; use preference_accuracy"):
        registry.check_fit("bleu", "preference", ["a"])
    with pytest.raises(TunelabError, match=r"'preference_accuracy' does not fit"):
        registry.check_fit("preference_accuracy", "chat", ["a"])


def test_sft_weight_adds_the_chosen_answers_likelihood_to_the_preference_loss(tiny_checkpoint, pairs, tmp_path,
                                                                               home):
    """RPO: with sft_weight the trainer's losses are [sigmoid, sft] weighted [1, w], and the tuned model finds the
    held-out chosen answers more likely than a pure DPO run of the same seed does."""
    train = {"max_steps": 12, "lr": 2e-2, "batch_size": 8, "save_every": 12}
    runs = {}
    for weight in (0.0, 1.0):
        recipe = dpo_recipe(tmp_path / str(weight), tiny_checkpoint, pairs, train=train, task={"sft_weight": weight})
        runs[weight] = train_recipe(recipe, home)
        assert run_record(runs[weight]).task_state["sft_weight"] == weight
    plain, supervised = (evaluate_and_record(runs[weight].root, home, QUIET, "cpu") for weight in (0.0, 1.0))
    assert supervised.tuned["loss"] < plain.tuned["loss"]  # the loss every evaluation reports is on chosen answers
    assert supervised.tuned["preference_accuracy"] > 0.5


def test_sft_weight_reaches_trl_as_a_weighted_second_loss(tiny_checkpoint, pairs, tmp_path, home):
    from tunelab.tasks.base import TrainerParts
    from tunelab.tasks.dpo import build_trainer
    from tunelab.train.lifecycle import build_model, set_up

    recipe = validate_recipe(dpo_recipe(tmp_path, tiny_checkpoint, pairs, task={"sft_weight": 0.5}))
    setup = set_up(recipe, home, QUIET, resume=False, overwrite=False, device="cpu")
    arguments = {"output_dir": str(tmp_path / "out"), "use_cpu": True, "report_to": [], "max_steps": 1}
    trainer = build_trainer(TrainerParts(build_model(setup), setup.tokenizer, setup.data, arguments, []))
    assert trainer.args.loss_type == ["sigmoid", "sft"] and trainer.args.loss_weights == [1.0, 0.5]
