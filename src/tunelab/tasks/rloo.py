"""REINFORCE leave-one-out (RLOO, Ahmadian et al. 2024): for each prompt the model samples num_generations answers,
the recipe's rewards score them, and each answer's advantage is its reward minus the mean reward of the other answers
to the same prompt; a KL penalty to the reference (beta) is part of the reward. With TRL's RLOOTrainer, no value
model.

Trains on prompt rows (a prompt and the fields the rewards read); `rewards:` is required. With an adapter the
reference is the model with its adapter disabled (no second copy of the weights). Evaluated as grpo is: base and
tuned answer held-out prompts and the same rewards judge them (tasks/shared.py prompt_evaluation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from tunelab.tasks.base import Task, TaskConfig, TaskData, TaskInputs, TrainerParts
from tunelab.tasks.shared import (
    causal_lm,
    language_model_inference,
    online_prepare,
    prompt_task_evaluation,
    trl_online_trainer,
)

if TYPE_CHECKING:
    pass


class RlooConfig(TaskConfig):
    name: Literal["rloo"] = "rloo"
    num_generations: int = Field(4, ge=2, description="Answers sampled per prompt (each one's baseline is the "
                                 "others' mean); train.batch_size * train.grad_accum counts answers and must be a "
                                 "multiple of it.")
    max_completion_length: int = Field(64, ge=1, description="Longest answer generated, in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the answers.")
    beta: float = Field(0.05, ge=0, description="KL penalty to the reference (the base model), TRL's default; 0 "
                        "computes no reference.")
    epsilon: float = Field(0.2, gt=0, description="Clip range of the policy ratio.")
    normalize_advantages: bool = Field(False, description="Scale each generation batch's advantages to mean 0, "
                                       "standard deviation 1.")


def prepare(inputs: TaskInputs) -> TaskData:
    return online_prepare(inputs, "rloo")


def build_trainer(parts: TrainerParts) -> Any:
    from trl import RLOOConfig, RLOOTrainer

    return trl_online_trainer(parts, RLOOTrainer, RLOOConfig)


TASK = Task(
    name="rloo",
    config_class=RlooConfig,
    summary="Learn from the recipe's rewards by sampling several answers per prompt, each judged against the "
            "others' mean (TRL's RLOO); evaluated by the rewards of base and tuned answers to held-out prompts.",
    row_kinds=("prompt",),
    prepare=prepare,
    load_model=causal_lm,
    build_trainer=build_trainer,
    evaluation=prompt_task_evaluation("rloo"),
    inference=language_model_inference,
)
