"""Preference tuning on the real built-in SmolLM2-135M-Instruct: DPO with LoRA on generated pairs (the chosen answer
is the note's JSON, the rejected one a chatty wrapper around JSON with a wrong quantity) moves the tuned model's
preference toward the chosen answers on held-out pairs."""

import json

import pytest
from rich.console import Console

from tests.conftest import write_jsonl
from tunelab.config.load import validate_recipe
from tunelab.data.synthetic import generate_rows
from tunelab.models.catalog import DEFAULT_MODEL
from tunelab.train.lifecycle import run_recipe

pytestmark = pytest.mark.integration


def json_pairs(count):
    pairs = []
    for row in generate_rows("notes-to-json", count, seed=3):
        wrong = json.loads(row["completion"])
        wrong["quantity"] += 7
        pairs.append({"prompt": row["prompt"], "chosen": row["completion"],
                      "rejected": f"Sure! Here is the JSON for this order note: {json.dumps(wrong)} Let me know "
                                  "if you need anything else."})
    return pairs


def test_dpo_with_lora_shifts_the_135m_model_toward_the_chosen_answers(real_home, real_model, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", json_pairs(72))
    recipe = validate_recipe({
        "task": {"name": "dpo", "beta": 0.1},
        "model": {"name": DEFAULT_MODEL},
        "data": {"train": str(data), "split": {"validation": 0, "test": 16 / 72, "seed": 0}, "max_length": 256},
        "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        "train": {"max_steps": 8, "lr": 1e-3, "batch_size": 4, "save_every": 8, "log_every": 1, "warmup": 0},
        "eval": {"batch_size": 8, "forgetting": {"enabled": False}, "risks": {"enabled": False}},
        "output": {"dir": str(tmp_path / "run"), "merge": False},
    })
    outcome = run_recipe(recipe, real_home, Console(quiet=True))
    losses = [json.loads(line)["loss"] for line in outcome.run.train_log.read_text().splitlines() if '"loss"' in line]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    evaluation = outcome.evaluation
    assert evaluation.rows == 16 and evaluation.primary_metric == "preference_accuracy"
    assert evaluation.tuned["mean_margin"] > evaluation.base["mean_margin"]
    assert evaluation.tuned["preference_accuracy"] >= evaluation.base["preference_accuracy"]
