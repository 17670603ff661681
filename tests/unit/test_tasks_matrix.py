"""Every task (and every classification style) runs the one lifecycle on a tiny model and comes out evaluated alike:
base and tuned scored on the test rows, bootstrap intervals, flips, a forgetting probe, the gate, report.html and
TensorBoard files. A new task adds its row to ROWS; the first test fails until it does."""

import pytest
from rich.console import Console

from tests.conftest import reverse_rows, tiny_recipe, unique_words, write_jsonl
from tunelab.config.load import validate_recipe
from tunelab.run.record import read_evaluation, read_record
from tunelab.tasks.classification import STYLES
from tunelab.tasks.registry import TASKS
from tunelab.train.lifecycle import run_recipe


def prompt_completion(path):
    return write_jsonl(path, reverse_rows(60))


def plain_text(path):
    return write_jsonl(path, [{"text": f"{row['prompt']} gives {row['completion']}."} for row in reverse_rows(60)])


def labelled(path):
    return write_jsonl(path, [{"text": word, "label": "vowel" if word[0] in "aeiou" else "consonant"}
                              for word in unique_words(80, "aeioubcdfg")])


def preference_pairs(path):
    return write_jsonl(path, [{"prompt": row["prompt"], "chosen": row["completion"], "rejected": row["prompt"]}
                              for row in reverse_rows(60)])


def feedback_rows(path):
    return write_jsonl(path, [{"prompt": row["prompt"], "completion": row["completion"] if index % 2 else row["prompt"],
                               "label": bool(index % 2)} for index, row in enumerate(reverse_rows(60))])


def prompts(path):
    return write_jsonl(path, [{"prompt": row["prompt"], "reference": row["completion"]} for row in reverse_rows(60)])


# What judges the online RL tasks' answers (their recipes need rewards).
REWARDS = [{"type": "string_check", "name": "reversed", "input": "{{ sample.output_text }}",
            "reference": "{{ item.reference }}", "operation": "eq"}]
ONLINE = {"name": "grpo", "num_generations": 4, "max_completion_length": 8}

# (task section, data writer, model fixture, headline metric, forgetting measure)
ROWS = {
    "sft/prompt-completion": ({"name": "sft"}, prompt_completion, "tiny_checkpoint", "exact_match", "perplexity"),
    "sft/text": ({"name": "sft"}, plain_text, "tiny_checkpoint", "loss", "perplexity"),
    "classification/head": ({"name": "classification", "style": "head"}, labelled, "tiny_encoder", "accuracy",
                            "drift"),
    "classification/generate": ({"name": "classification", "style": "generate"}, labelled, "tiny_checkpoint",
                                "accuracy", "perplexity"),
    "dpo": ({"name": "dpo"}, preference_pairs, "tiny_checkpoint", "preference_accuracy", "perplexity"),
    "reward_model": ({"name": "reward_model"}, preference_pairs, "tiny_checkpoint", "preference_accuracy", "drift"),
    "grpo": (ONLINE, prompts, "tiny_checkpoint", "mean_reward", "perplexity"),
    "rloo": ({**ONLINE, "name": "rloo"}, prompts, "tiny_checkpoint", "mean_reward", "perplexity"),
    "ppo": ({"name": "ppo", "max_new_tokens": 8}, prompts, "tiny_checkpoint", "mean_reward", "perplexity"),
    "kto": ({"name": "kto"}, feedback_rows, "tiny_checkpoint", "feedback_margin", "perplexity"),
    "orpo": ({"name": "orpo"}, preference_pairs, "tiny_checkpoint", "preference_accuracy", "perplexity"),
    "simpo": ({"name": "simpo"}, preference_pairs, "tiny_checkpoint", "preference_accuracy", "perplexity"),
}


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    from tests.tiny import save_tiny_encoder_checkpoint

    return save_tiny_encoder_checkpoint(tmp_path_factory.mktemp("encoder") / "tiny-bert")


def test_every_task_and_style_has_a_row():
    assert {row[0]["name"] for row in ROWS.values()} == set(TASKS)
    assert {row[0]["style"] for row in ROWS.values() if "style" in row[0]} == set(STYLES)


@pytest.mark.parametrize("row", list(ROWS))
def test_every_task_runs_the_one_lifecycle_and_is_evaluated_alike(row, request, tmp_path, home):
    task, write_data, model, headline, measure = ROWS[row]
    recipe = tiny_recipe(tmp_path, request.getfixturevalue(model), write_data(tmp_path / "rows.jsonl"),
                         train={"max_steps": 4, "batch_size": 8, "save_every": 4, "eval_every": 4},
                         eval={"bootstrap": 200},
                         objective={"metric": headline, "max_forgetting": 10.0})
    recipe["task"] = task
    if write_data is prompts:
        recipe["rewards"] = REWARDS
    recipe["data"].update(split={"validation": 0.1, "test": 0.2, "seed": 1}, max_length=256)
    outcome = run_recipe(validate_recipe(recipe), home, Console(quiet=True), device="cpu")

    record = read_record(outcome.run)
    assert record.status == "completed" and record.task == task["name"] and record.training.steps == 4
    evaluation = read_evaluation(outcome.run)
    assert evaluation == outcome.evaluation and evaluation.task == task["name"]
    assert evaluation.rows == record.data.splits["test"].rows > 0
    assert headline in evaluation.metrics and evaluation.primary_metric == headline
    for name in evaluation.metrics:
        assert evaluation.delta[name] == pytest.approx(evaluation.tuned[name] - evaluation.base[name])
        low, high = evaluation.intervals.delta[name]
        assert low <= evaluation.delta[name] <= high
    flips = evaluation.flips
    if evaluation.kind in ("text", "feedback"):  # no per-row right or wrong: no flips
        assert flips is None and headline in ("loss", "feedback_margin")
    elif evaluation.kind == "prompt":  # answers judged by rewards: won, tied or lost against base, not right/wrong
        assert flips is None and {"win_rate", "mean_reward", "mean_answer_tokens"} <= set(evaluation.metrics)
        assert evaluation.base["win_rate"] == 0.5
    else:
        assert flips.fixed + flips.broken + flips.both_right + flips.both_wrong == evaluation.rows
    assert evaluation.forgetting.measure == measure and evaluation.forgetting.probes
    assert [check.check for check in evaluation.objective.checks] == ["max_forgetting"]
    assert evaluation.objective.checks[0].actual == evaluation.forgetting.value
    assert (outcome.run.root / "report.html").read_text().count("<svg") >= 1
    assert list((outcome.run.root / "tensorboard").glob("events.out.tfevents.*"))
