"""The RLHF family on the real built-in SmolLM2-135M-Instruct: a reward model learns from the generated order-note
pairs, then PPO trains a LoRA policy against it (score_model naming that run), a few steps each; and GRPO with the
demos' rule rewards. Small budgets: what is checked is that the real model goes through every stage (the reward
model ranks held-out pairs, PPO's rollouts are scored by it, GRPO's rewards are logged by name and the judged
evaluation compares base and tuned answers), not how far a handful of steps moves it."""

import json
from pathlib import Path

import pytest
from rich.console import Console

from tunelab.config.load import validate_recipe
from tunelab.models.catalog import DEFAULT_MODEL
from tunelab.train.lifecycle import run_recipe

pytestmark = pytest.mark.integration

REWARDS = str(Path(__file__).resolve().parents[2] / "recipes" / "rewards" / "order_json.py")
LORA = {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0}


def logged(run) -> list[dict]:
    return [json.loads(line) for line in run.train_log.read_text().splitlines()]


def train(recipe: dict, home: Path):
    return run_recipe(validate_recipe(recipe), home, Console(quiet=True))


def test_a_reward_model_then_ppo_against_it(real_home, real_model, tmp_path):
    rm = train({
        "task": "reward_model", "model": {"name": DEFAULT_MODEL}, "method": LORA,
        "data": {"generate": {"task": "notes-to-json-pairs", "rows": 56, "seed": 5},
                 "split": {"validation": 0, "test": 0.25, "seed": 0}, "max_length": 192},
        "train": {"max_steps": 4, "lr": 5e-4, "batch_size": 8, "save_every": 4, "log_every": 1, "warmup": 0},
        "eval": {"batch_size": 16, "forgetting": {"enabled": False}, "risks": {"enabled": False}},
        "output": {"dir": str(tmp_path / "rm")},
    }, real_home)
    assert rm.evaluation.tuned["preference_accuracy"] >= 0.5

    ppo = train({
        "task": {"name": "ppo", "max_new_tokens": 24, "ppo_epochs": 2}, "model": {"name": DEFAULT_MODEL},
        "method": LORA, "rewards": [{"type": "score_model", "name": "rm", "model": str(rm.run.root)}],
        "data": {"generate": {"task": "notes-to-json-prompts", "rows": 40, "seed": 6},
                 "split": {"validation": 0, "test": 0.1, "seed": 0}, "max_length": 256},
        "train": {"max_steps": 4, "lr": 1e-4, "batch_size": 2, "save_every": 4, "log_every": 1, "warmup": 0},
        "eval": {"batch_size": 4, "max_new_tokens": 24, "forgetting": {"enabled": False}, "risks": {"enabled": False}},
        "output": {"dir": str(tmp_path / "ppo")},
    }, real_home)
    steps = [row for row in logged(ppo.run) if "reward" in row]
    assert len(steps) == 4 and all(isinstance(row["reward"], float) for row in steps)
    assert len({row["reward"] for row in steps}) > 1  # the reward model scores each rollout, not a constant
    evaluation = ppo.evaluation
    assert evaluation.primary_metric == "win_rate" and evaluation.base["win_rate"] == 0.5
    assert evaluation.rows == 4 and 0 <= evaluation.tuned["win_rate"] <= 1


@pytest.mark.slow  # ~80 s: the online-RL family's real test in `make test` is reward model -> PPO
def test_grpo_with_rule_rewards(real_home, real_model, tmp_path):
    rewards = [{"type": "function", "function": f"{REWARDS}:{name}"} for name in ("json_only", "keys_present")]
    outcome = train({
        "task": {"name": "grpo", "num_generations": 4, "max_completion_length": 32},
        "model": {"name": DEFAULT_MODEL}, "method": LORA, "rewards": rewards,
        "data": {"generate": {"task": "notes-to-json-prompts", "rows": 40, "seed": 7},
                 "split": {"validation": 0, "test": 0.1, "seed": 0}, "system_prompt": "You convert order notes "
                 "to JSON.", "max_length": 256},
        "train": {"max_steps": 3, "lr": 1e-4, "batch_size": 8, "save_every": 3, "log_every": 1, "warmup": 0},
        "eval": {"batch_size": 4, "max_new_tokens": 32, "forgetting": {"enabled": False}, "risks": {"enabled": False}},
        "output": {"dir": str(tmp_path / "grpo")},
    }, real_home)
    rows = [row for row in logged(outcome.run) if "rewards/keys_present/mean" in row]
    assert len(rows) == 3 and all(0 <= row["rewards/keys_present/mean"] <= 1 for row in rows)
    evaluation = outcome.evaluation
    assert set(evaluation.metrics) >= {"win_rate", "mean_reward", "mean_answer_tokens", "kl_to_reference"}
    assert evaluation.base["kl_to_reference"] == 0.0
