"""Direct preference optimisation (DPO): learn from preference rows (a prompt, a chosen and a rejected answer) to
rank the chosen answer above the rejected one, relative to a frozen reference, with TRL's DPOTrainer.

The reference is the starting model. With an adapter (LoRA and the other peft methods) it is the same model with the
adapter disabled, so no second copy of the weights is held; with full fine-tuning TRL loads a frozen copy.
Rows reach TRL in its conversational preference format (prompt messages, one assistant message each for chosen and
rejected), which it renders with the model's chat template. A run is evaluated on held-out pairs by each model's
log-probability margin between the chosen and the rejected answer (evaluate/preference.py): the share of pairs it
ranks as the data does (`preference_accuracy`) and the mean margin, base vs tuned. The tuned model is a causal LM
that writes text, served and exported as an SFT run is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from tunelab.tasks.base import Task, TaskConfig, TaskData, TaskInputs, TrainerParts
from tunelab.tasks.shared import causal_lm, language_model_inference, pair_task_evaluation, prepare_pairs, trl_trainer

if TYPE_CHECKING:
    pass

# The losses TRL 1.16's DPOConfig accepts (trl/trainer/dpo_trainer.py `_compute_loss`).
LossType = Literal["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                   "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]


class DpoConfig(TaskConfig):
    name: Literal["dpo"] = "dpo"
    beta: float = Field(0.1, gt=0, description="How far the tuned model may move from the reference: higher keeps "
                        "it closer (for loss_type ipo, the regularisation tau).")
    loss_type: LossType = Field("sigmoid", description="The preference loss (TRL's DPOConfig.loss_type): sigmoid is "
                                "the DPO paper's; ipo, hinge, robust, exo_pair, bco_pair, ... their papers'.")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="robust: the probability that a pair's label is "
                                   "flipped; exo_pair: its epsilon (needs > 0, e.g. 1e-3).")
    sft_weight: float = Field(0.0, ge=0, description="Weight of a supervised term (the chosen answer's negative "
                              "log-likelihood) added to the preference loss: RPO (Pang et al., 2024), TRL's "
                              "loss_type [..., sft] with loss_weights. A preference loss alone can widen the margin "
                              "by lowering both answers' likelihood, and the model's own answers then get worse; "
                              "1.0 is the paper's.")

    @model_validator(mode="after")
    def exo_needs_smoothing(self) -> "DpoConfig":
        if self.loss_type == "exo_pair" and self.label_smoothing == 0:
            raise ValueError("loss_type exo_pair needs task.label_smoothing > 0 (the EXO paper uses 1e-3)")
        return self


def prepare(inputs: TaskInputs) -> TaskData:
    options = inputs.recipe.task
    return prepare_pairs(inputs, "dpo", {"beta": options.beta, "loss_type": options.loss_type,
                                         "label_smoothing": options.label_smoothing,
                                         "sft_weight": options.sft_weight})


def build_trainer(parts: TrainerParts) -> Any:
    """TRL's DPOTrainer from the shared arguments and callbacks. ref_model=None: with a peft model TRL computes the
    reference log-probabilities with the adapter disabled; for full fine-tuning it loads a frozen copy."""
    from trl import DPOConfig, DPOTrainer

    state = parts.data.state
    # .get: runs recorded before sft_weight existed resume and evaluate as they were trained (no supervised term)
    supervised = state.get("sft_weight", 0.0)
    losses = {"loss_type": [state["loss_type"], "sft"], "loss_weights": [1.0, supervised]} if supervised else \
        {"loss_type": [state["loss_type"]]}
    arguments = DPOConfig(**parts.arguments, beta=state["beta"], **losses, label_smoothing=state["label_smoothing"],
                          max_length=state["max_length"], truncation_mode="keep_start")
    return trl_trainer(parts, DPOTrainer, arguments, ref_model=None)


TASK = Task(
    name="dpo",
    config_class=DpoConfig,
    summary="Learn from preference pairs to rank the chosen answer above the rejected one (TRL's DPO); evaluated "
            "by the share of held-out pairs each model ranks right and its log-probability margin.",
    row_kinds=("preference",),
    prepare=prepare,
    load_model=causal_lm,
    build_trainer=build_trainer,
    evaluation=pair_task_evaluation("dpo"),
    inference=language_model_inference,
)
