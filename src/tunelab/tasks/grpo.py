"""Group relative policy optimisation (GRPO, DeepSeekMath): for each prompt the model samples num_generations
answers, the recipe's rewards score them, and each answer's advantage is its reward against its group's mean (scaled
by the group's spread); the policy follows the clipped surrogate of those advantages, with TRL's GRPOTrainer. No
value model; a KL penalty to the reference only where beta > 0 (TRL's default is none).

Trains on prompt rows (a prompt and the fields the rewards read as `{{ item.x }}` or columns); `rewards:` is
required. With an adapter the reference is the model with its adapter disabled (no second copy of the weights).
Evaluated by generating answers to held-out prompts with base and tuned and judging them with the same rewards
(tasks/shared.py prompt_evaluation). The tuned model writes text, served and exported as an SFT run is.
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


class GrpoConfig(TaskConfig):
    name: Literal["grpo"] = "grpo"
    num_generations: int = Field(4, ge=2, description="Answers sampled per prompt, compared with each other; "
                                 "train.batch_size * train.grad_accum counts answers and must be a multiple of it.")
    max_completion_length: int = Field(64, ge=1, description="Longest answer generated, in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the answers.")
    beta: float = Field(0.0, ge=0, description="KL penalty to the reference (the base model); 0, TRL's default, "
                        "computes no reference at all.")
    epsilon: float = Field(0.2, gt=0, description="Clip range of the policy ratio.")
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo"] = Field(
        "dapo", description="How token losses are averaged (TRL's GRPOConfig.loss_type): dapo (TRL's default) over "
        "the batch's tokens, grpo over each answer's length, dr_grpo over a constant, ...")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Divide advantages by the group's reward spread (group), the batch's, or not at all "
        "(none, as Dr. GRPO recommends).")


def prepare(inputs: TaskInputs) -> TaskData:
    return online_prepare(inputs, "grpo")


def build_trainer(parts: TrainerParts) -> Any:
    from trl import GRPOConfig, GRPOTrainer

    return trl_online_trainer(parts, GRPOTrainer, GRPOConfig)


TASK = Task(
    name="grpo",
    config_class=GrpoConfig,
    summary="Learn from the recipe's rewards by sampling several answers per prompt and favouring the better ones "
            "of each group (TRL's GRPO); evaluated by the rewards of base and tuned answers to held-out prompts.",
    row_kinds=("prompt",),
    prepare=prepare,
    load_model=causal_lm,
    build_trainer=build_trainer,
    evaluation=prompt_task_evaluation("grpo"),
    inference=language_model_inference,
)
