"""The offline preference tasks on a tiny random model with planted pairs (the chosen answer is the prompt reversed,
the rejected one random letters, as in test_dpo): orpo and simpo (no reference model) and kto (unpaired feedback,
or pairs it unpairs). Each task's loss falls and the tuned model ranks held-out pairs right; resume gives the weights
of an uninterrupted run; the model trained is the base plus one adapter; bad input stops in one line."""

import json
import random

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


# ---- kto -----------------------------------------------------------------------------------------------------------

def planted_feedback(count, seed=0):
    """Each planted pair as one feedback row: its chosen answer labelled desirable or its rejected one not, at
    random (unpaired, as KTO's data is)."""
    rng = random.Random(seed + 1)
    rows = []
    for pair in planted_pairs(count, seed):
        desirable = rng.random() < 0.5
        rows.append({"prompt": pair["prompt"], "completion": pair["chosen"] if desirable else pair["rejected"],
                     "label": desirable})
    return rows


@pytest.fixture
def feedback(tmp_path):
    return write_jsonl(tmp_path / "feedback.jsonl", planted_feedback(80))


KTO = {"name": "kto", "beta": 0.5}


def test_kto_on_feedback_rows_raises_desirable_completions_and_lowers_the_others(tiny_checkpoint, feedback,
                                                                                  tmp_path, home):
    run_dir, evaluation = trained_and_evaluated(tmp_path, tiny_checkpoint, feedback, home, KTO, 2e-2)
    record = run_record(run_dir)
    assert record.task == "kto" and record.status == "completed"
    state = record.task_state
    assert state["desirable_rows"] + state["undesirable_rows"] == record.data.splits["train"].kept == 56
    assert min(state["desirable_rows"], state["undesirable_rows"]) > 15
    losses = logged_losses(run_dir)
    assert losses[0] == pytest.approx(0.5, abs=0.02)  # 1 - sigmoid(0): the policy starts equal to its reference
    assert sum(losses[-5:]) / 5 < 0.9 * losses[0]
    assert evaluation.kind == "feedback" and evaluation.primary_metric == "feedback_margin"
    assert evaluation.metrics == ["loss", "perplexity", "feedback_margin"] and evaluation.rows == 16
    assert evaluation.tuned["feedback_margin"] > evaluation.base["feedback_margin"]
    assert evaluation.intervals.delta["feedback_margin"][0] > 0  # the paired bootstrap's lower bound
    assert evaluation.flips is None  # a feedback row has no right or wrong of its own
    examples = [json.loads(line) for line in run_dir.eval_examples.read_text().splitlines()]
    tuned = sum(row["tuned_margin"] for row in examples) / len(examples)
    assert tuned == pytest.approx(evaluation.tuned["feedback_margin"])


def test_kto_on_preference_rows_learns_to_rank_held_out_pairs(tiny_checkpoint, pairs, tmp_path, home):
    run_dir, evaluation = trained_and_evaluated(tmp_path, tiny_checkpoint, pairs, home, KTO, 2e-2)
    state = run_record(run_dir).task_state
    assert state["desirable_rows"] == state["undesirable_rows"] == 56  # each pair unpaired into its two halves
    assert evaluation.kind == "preference" and evaluation.primary_metric == "preference_accuracy"
    assert evaluation.tuned["preference_accuracy"] > max(evaluation.base["preference_accuracy"], 0.5)
    assert evaluation.tuned["mean_margin"] > evaluation.base["mean_margin"]


def test_kto_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_checkpoint, feedback, tmp_path, home):
    whole = train_recipe(task_recipe(tmp_path / "a", tiny_checkpoint, feedback, KTO), home)
    recipe = task_recipe(tmp_path / "b", tiny_checkpoint, feedback, KTO)
    part = train_recipe(recipe, home, callbacks=(StopAt(3),))
    assert run_record(part).training.steps == 3
    resumed = train_recipe(recipe, home, resume=True)
    assert run_record(resumed).training.steps == 6
    assert_same_weights(adapter_weights(whole), adapter_weights(resumed), atol=1e-6)


def test_the_kto_reference_is_the_base_model_with_the_adapter_disabled(tiny_checkpoint, feedback, tmp_path, home):
    """TRL's copy of the adapter into a 'ref' one is dropped: one adapter on the base weights, held once, and the
    reference log-probabilities are the base model's."""
    import torch

    from tunelab.models.load import load_causal_lm

    trainer = built_trainer(tmp_path, tiny_checkpoint, feedback, home, KTO)
    base_model = load_causal_lm(tiny_checkpoint).eval()
    base = sum(parameter.numel() for parameter in base_model.parameters())
    adapter = sum(parameter.numel() for name, parameter in trainer.model.named_parameters() if "lora_" in name)
    assert trainer.ref_model is None and list(trainer.model.peft_config) == ["default"]
    assert sum(parameter.numel() for parameter in trainer.model.parameters()) == base + adapter
    with torch.no_grad():  # move the adapter off zero, so the policy and the reference differ
        for name, parameter in trainer.model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.5)
    batch = trainer.data_collator([trainer.train_dataset[index] for index in range(4)])
    reference, _ = trainer.compute_ref_log_probs(trainer.model, batch)
    policy_model = trainer.model.eval()
    expected, moved = [], []
    for model, out in ((base_model, expected), (policy_model, moved)):
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logps = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
        out.append((logps * batch["completion_mask"][:, 1:]).sum(-1))
    assert torch.allclose(reference, expected[0], atol=1e-4)
    assert not torch.allclose(reference, moved[0], atol=1e-2)  # the adapter is on outside the reference pass


def test_kto_without_undesirable_rows_is_one_line_and_exit_2(capsys, tiny_checkpoint, tmp_path, home):
    from tests.unit.test_cli import invoke, one_error_line, write_recipe

    rows = [row for row in planted_feedback(80) if row["label"]]
    recipe = task_recipe(tmp_path, tiny_checkpoint, write_jsonl(tmp_path / "good.jsonl", rows), KTO)
    code, _, err = invoke(capsys, "train", str(write_recipe(tmp_path, recipe)))
    assert code == 2
    assert "all desirable and no undesirable one; task kto learns from both" in one_error_line(err)
    assert not (tmp_path / "run").exists()


def test_kto_with_one_row_per_batch_is_refused_before_training(tiny_checkpoint, feedback, tmp_path, home):
    recipe = task_recipe(tmp_path, tiny_checkpoint, feedback, KTO, train={"batch_size": 1, "grad_accum": 8})
    with pytest.raises(TunelabError, match=r"train.batch_size: 1; task kto needs 2 or more") as error:
        train_recipe(recipe, home)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def test_kto_refuses_a_test_split_of_both_kinds_in_one_line(tiny_checkpoint, feedback, pairs, tmp_path):
    from tunelab.data.formats import Example
    from tunelab.tasks.kto import evaluation

    recipe = validate_recipe(task_recipe(tmp_path, tiny_checkpoint, feedback, KTO))
    test = [Example("f.jsonl", 1, [{"role": "user", "content": "ab"}], completion="ba", desirable=True),
            Example("p.jsonl", 1, [{"role": "user", "content": "ab"}], chosen="ba", rejected="xy")]
    with pytest.raises(TunelabError, match=r"both feedback and preference rows; task kto evaluates one kind"):
        evaluation(recipe, test, {}, None)


def test_feedback_margin_by_hand_and_where_it_fits():
    from tunelab.metrics import registry

    inputs = registry.RowInputs(["a", "b", "c"], ["a", "b", "c"], margins=[-1.0, 0.5, -2.5])
    assert registry.scores(registry.row_statistics(["feedback_margin"], inputs)) == {"feedback_margin": -1.0}
    assert registry.default_metrics("feedback", ["a"]) == ["feedback_margin"]
    with pytest.raises(TunelabError, match=r"'preference_accuracy' does not fit feedback rows; use feedback_margin"):
        registry.check_fit("preference_accuracy", "feedback", ["a"])
    with pytest.raises(TunelabError, match=r"'feedback_margin' does not fit"):
        registry.check_fit("feedback_margin", "preference", ["a"])
