"""Odds ratio preference optimisation (ORPO): learn from preference rows (a prompt, a chosen and a rejected answer)
in one stage, supervised loss on the chosen answer plus a penalty on the log odds ratio of the rejected answer to
the chosen one, with TRL's experimental ORPOTrainer.

ORPO needs no reference model: its penalty compares the policy's own odds of the two answers, so nothing is held
besides the model being trained (with an adapter, nothing but the adapter is added to the base). Rows reach TRL in
its conversational preference format, rendered with the model's chat template, as for dpo (tasks/shared.py). A run
is evaluated as dpo is: on held-out pairs, each model's log-probability margin between the chosen and the rejected
answer (`preference_accuracy`, `mean_margin`), base vs tuned. The tuned model writes text, served and exported as
an SFT run is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from tunelab.tasks.base import Task, TaskConfig, TaskData, TaskInputs, TrainerParts
from tunelab.tasks.shared import (
    causal_lm,
    language_model_inference,
    pair_batch_arguments,
    pair_task_evaluation,
    prepare_pairs,
    trl_trainer,
)

if TYPE_CHECKING:
    pass


class OrpoConfig(TaskConfig):
    name: Literal["orpo"] = "orpo"
    beta: float = Field(0.1, gt=0, le=10, description="Weight of the odds-ratio penalty against the supervised loss "
                        "on the chosen answer (the paper's lambda; TRL's ORPOConfig.beta; the paper uses 0.1-0.25).")


def prepare(inputs: TaskInputs) -> TaskData:
    return prepare_pairs(inputs, "orpo", {"beta": inputs.recipe.task.beta})


def build_trainer(parts: TrainerParts) -> Any:
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    state = parts.data.state
    arguments = ORPOConfig(**pair_batch_arguments(parts.arguments), beta=state["beta"],
                           max_length=state["max_length"])
    return trl_trainer(parts, ORPOTrainer, arguments)


TASK = Task(
    name="orpo",
    config_class=OrpoConfig,
    summary="Learn from preference pairs in one stage, without a reference model (TRL's ORPO: supervised loss on "
            "the chosen answer plus an odds-ratio penalty); evaluated as dpo is, on held-out pairs.",
    row_kinds=("preference",),
    prepare=prepare,
    load_model=causal_lm,
    build_trainer=build_trainer,
    evaluation=pair_task_evaluation("orpo"),
    inference=language_model_inference,
)
