"""Simple preference optimisation (SimPO): learn from preference rows to rank the chosen answer above the rejected
one by a target margin of their length-normalised log-probabilities, with TRL's experimental CPOTrainer as TRL
documents SimPO (loss_type="simpo", cpo_alpha=0).

SimPO needs no reference model: its reward is the policy's own mean log-probability per answer token, scaled by
beta, and the loss asks the chosen answer's to exceed the rejected one's by simpo_gamma. A cpo_alpha above 0 adds
CPO's supervised loss on the chosen answer (the "CPO-SimPO" mix). Rows reach TRL in its conversational preference
format, rendered with the model's chat template, as for dpo (tasks/shared.py). A run is evaluated as dpo is, so
the preference tasks compare on one scale: on held-out pairs, each model's log-probability margin between the
chosen and the rejected answer summed over their tokens (`preference_accuracy`, `mean_margin`), base vs tuned.
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


class SimpoConfig(TaskConfig):
    name: Literal["simpo"] = "simpo"
    beta: float = Field(2.0, gt=0, le=100, description="Scale of the reward, the mean log-probability per answer "
                        "token (the SimPO paper uses 2.0-2.5; TRL's CPOConfig.beta).")
    simpo_gamma: float = Field(0.5, ge=0, le=100, description="The target margin of the chosen answer's reward over "
                               "the rejected one's (TRL's CPOConfig.simpo_gamma, the paper's gamma: 0.3-1.6).")
    cpo_alpha: float = Field(0.0, ge=0, le=10, description="Weight of a supervised loss on the chosen answer added "
                             "to SimPO's (0: SimPO as its paper; above 0: CPO-SimPO).")


def prepare(inputs: TaskInputs) -> TaskData:
    options = inputs.recipe.task
    return prepare_pairs(inputs, "simpo", {"beta": options.beta, "simpo_gamma": options.simpo_gamma,
                                           "cpo_alpha": options.cpo_alpha})


def build_trainer(parts: TrainerParts) -> Any:
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    state = parts.data.state
    arguments = CPOConfig(**pair_batch_arguments(parts.arguments), loss_type="simpo", beta=state["beta"],
                          simpo_gamma=state["simpo_gamma"], cpo_alpha=state["cpo_alpha"],
                          max_length=state["max_length"])
    return trl_trainer(parts, CPOTrainer, arguments)


TASK = Task(
    name="simpo",
    config_class=SimpoConfig,
    summary="Learn from preference pairs without a reference model by a margin of length-normalised "
            "log-probabilities (SimPO, on TRL's CPOTrainer); evaluated as dpo is, on held-out pairs.",
    row_kinds=("preference",),
    prepare=prepare,
    load_model=causal_lm,
    build_trainer=build_trainer,
    evaluation=pair_task_evaluation("simpo"),
    inference=language_model_inference,
)
