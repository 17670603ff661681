"""PPO (RLHF as InstructGPT trains it): the model answers each prompt, the recipe's rewards score the answer, a
value head estimates returns, and the policy follows PPO's clipped surrogate with a per-token KL penalty to the
reference. The trainer is tunelab's own (train/ppo.py: TRL 1.x has no PPO trainer); its settings are the options.

Trains on prompt rows (a prompt and the fields the rewards read); `rewards:` is required. The reference is the
policy with its adapter disabled, so the method must be an adapter (full fine-tuning is refused when the recipe is
checked). Validation rows are not used while training (a rollout is a training step). Evaluated as grpo is: base and
tuned answer held-out prompts and the same rewards judge them (tasks/shared.py prompt_evaluation).
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from tunelab.errors import TunelabError
from tunelab.tasks.base import Task, TaskConfig, TaskData, TaskInputs, TrainerParts
from tunelab.tasks.shared import (
    causal_lm,
    conversational_prompt,
    language_model_inference,
    prompt_data,
    prompt_task_evaluation,
)

if TYPE_CHECKING:
    pass


class PpoConfig(TaskConfig):
    """PPOSettings (train/ppo.py) as recipe options, with its defaults."""

    name: Literal["ppo"] = "ppo"
    max_new_tokens: int = Field(16, ge=1, description="Longest answer generated in a rollout, in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts.")
    kl_coef: float = Field(0.05, ge=0, description="Per-token penalty for drifting from the reference (the base "
                           "model), InstructGPT's beta.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount of later rewards.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE's lambda: bias (0) against variance (1) of advantages.")
    clip_range: float = Field(0.2, gt=0, description="Clip range of the policy ratio.")
    clip_range_value: float = Field(0.2, gt=0, description="Clip range of the value estimates.")
    value_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    ppo_epochs: int = Field(2, ge=1, description="Optimizer steps on each rollout (the prompts of the steps between "
                            "are not sampled).")
    missing_eos_penalty: float | None = Field(None, ge=0, description="Subtracted from the rewards' score of a "
                                              "rollout cut at max_new_tokens (no EOS); none by default.")


def prepare(inputs: TaskInputs) -> TaskData:
    from tunelab.methods.registry import get_method

    recipe = inputs.recipe
    if not get_method(recipe.method.name).is_adapter:
        raise TunelabError(f"method: task ppo's reference is the model with its adapter disabled, and method "
                           f"'{recipe.method.name}' trains no adapter; use lora (or another adapter method)")
    options = recipe.task
    data = prompt_data(inputs, "ppo", conversational_prompt, options.max_new_tokens,
                       options.model_dump(exclude={"name"}))
    data.validation = None  # a rollout is a training step: nothing to validate on between them
    return data


def build_trainer(parts: TrainerParts) -> Any:
    from transformers import PrinterCallback, TrainingArguments

    from tunelab.tasks.shared import saved_rewards
    from tunelab.train.ppo import PPOSettings, PPOTrainer, ValueHead

    state = parts.data.state
    settings = PPOSettings(**{field.name: state[field.name] for field in fields(PPOSettings)})
    # Answers are generated inside the trainer: there are no input_ids in a batch for the Trainer to count.
    arguments = TrainingArguments(**{**parts.arguments, "include_num_input_tokens_seen": "no"})
    value_head = ValueHead(parts.model.config.hidden_size).to(arguments.device)
    trainer = PPOTrainer(model=parts.model, args=arguments, train_dataset=parts.data.train,
                         processing_class=parts.tokenizer, reward_funcs=saved_rewards(state, parts.rewards_context),
                         value_head=value_head, settings=settings, callbacks=parts.callbacks)
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; the progress callback shows them instead
    return trainer


TASK = Task(
    name="ppo",
    config_class=PpoConfig,
    summary="Learn from the recipe's rewards with PPO (a value head, GAE, a KL penalty to the adapter-free "
            "reference; tunelab's trainer); evaluated by the rewards of base and tuned answers to held-out prompts.",
    row_kinds=("prompt",),
    prepare=prepare,
    load_model=causal_lm,
    build_trainer=build_trainer,
    evaluation=prompt_task_evaluation("ppo"),
    inference=language_model_inference,
)
