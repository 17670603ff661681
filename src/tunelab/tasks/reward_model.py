"""Reward model: learn from preference rows to score a conversation (prompt and answer) with one number, higher for
the chosen answer than for the rejected one, with TRL's RewardTrainer (the Bradley-Terry loss -log sigmoid(r_chosen -
r_rejected)).

The model is the base checkpoint with a fresh scalar head (AutoModelForSequenceClassification, num_labels=1, seeded
so base and tuned share it), trained with the recipe's method: peft methods treat it as a SEQ_CLS model, so the head
trains and is saved with the adapter (as a classification head does). Pairs are tokenized here with the chat
template and handed to TRL already tokenized; a pair longer than data.max_length is left out (and counted), since
cutting it would cut the end of the answer the head reads. Evaluated on held-out pairs by the reward margin,
score(chosen) - score(rejected): `preference_accuracy` (reward accuracy) and `mean_margin`, base head vs tuned.
The model writes no text; its forgetting is measured as hidden-state drift.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from tunelab.tasks.base import Inference, Task, TaskConfig, TaskData, TaskEvaluation, TaskInputs, TrainerParts
from tunelab.tasks.shared import check_pairs, pair_evaluation, trl_trainer

if TYPE_CHECKING:
    from pathlib import Path

    from tunelab.config.schema import Recipe
    from tunelab.data.formats import Example
    from tunelab.rewards.build import RewardContext
    from tunelab.run.models import RunModels

REWARD_LABEL = ["reward"]  # the head's one output


class RewardModelConfig(TaskConfig):
    name: Literal["reward_model"] = "reward_model"
    center_rewards: float | None = Field(None, ge=0, description="Weight of a penalty that keeps rewards near zero "
                                         "(TRL's center_rewards_coefficient; the paper suggests 0.01).")


def encode_split(examples: list["Example"], tokenizer: Any, max_length: int) -> tuple[Any, Any]:
    from datasets import Dataset

    from tunelab.evaluate.preference import conversation_ids
    from tunelab.run.record import SplitCounts

    kept: list[dict[str, list[int]]] = []
    for example in examples:
        chosen, rejected = (conversation_ids(tokenizer, example, answer) for answer in (example.chosen,
                                                                                         example.rejected))
        if max(len(chosen), len(rejected)) <= max_length:
            kept.append({"chosen_ids": chosen, "rejected_ids": rejected})
    tokens = sum(len(row["chosen_ids"]) + len(row["rejected_ids"]) for row in kept)
    counts = SplitCounts(rows=len(examples), kept=len(kept), dropped_overlong=len(examples) - len(kept),
                         tokens=tokens)
    return (Dataset.from_list(kept) if kept else None), counts


def prepare(inputs: TaskInputs) -> TaskData:
    splits, data = inputs.prepared.splits(), inputs.recipe.data
    for name, examples in splits.items():
        check_pairs(examples, f"{name} split", "reward_model")
    encoded = {name: encode_split(examples, inputs.tokenizer, data.max_length) for name, examples in splits.items()}
    return TaskData(splits=splits, train=encoded["train"][0], validation=encoded["validation"][0],
                    counts={name: counts for name, (_, counts) in encoded.items()}, collator=None,
                    padding_free=False,
                    state={"center_rewards": inputs.recipe.task.center_rewards, "max_length": data.max_length})


def load_model(checkpoint: "Path", data: TaskData, recipe: "Recipe", tokenizer: Any) -> Any:
    from tunelab.models.classifier import load_sequence_classifier

    return load_sequence_classifier(checkpoint, REWARD_LABEL, tokenizer.pad_token_id, recipe.train.seed)


def build_trainer(parts: TrainerParts) -> Any:
    from trl import RewardConfig, RewardTrainer

    state = parts.data.state
    arguments = RewardConfig(**parts.arguments, max_length=state["max_length"],
                             center_rewards_coefficient=state["center_rewards"])
    return trl_trainer(parts, RewardTrainer, arguments)


def evaluation(recipe: "Recipe", test: list["Example"], state: dict[str, Any], tokenizer: Any,
               source: str = "test split", context: "RewardContext | None" = None) -> TaskEvaluation:
    from tunelab.evaluate.preference import reward_outputs

    return pair_evaluation(recipe, test, source, "reward_model", reward_outputs, "drift",
                           "the reward head's score of prompt + chosen against prompt + rejected "
                           "(nothing is generated)", writes_text=False)


def inference(models: "RunModels") -> Inference:
    from tunelab.models.classifier import load_sequence_classifier

    def load_base() -> Any:  # the base model with the same freshly initialised head training started from
        model = load_sequence_classifier(models.base_path(), REWARD_LABEL, models.tokenizer().pad_token_id,
                                         models.recipe.train.seed)
        return models.placement.place(model).eval()

    return Inference(writes_text=False, load_base=load_base, load_tuned=lambda: models.tuned(load_base),
                     instead="its model is a reward model: it scores a prompt and answer with one number and "
                             "writes no text")


TASK = Task(
    name="reward_model",
    config_class=RewardModelConfig,
    summary="Learn from preference pairs to score the chosen answer above the rejected one (TRL's RewardTrainer, "
            "a scalar head on the base); evaluated by reward accuracy and margin on held-out pairs.",
    row_kinds=("preference",),
    prepare=prepare,
    load_model=load_model,
    build_trainer=build_trainer,
    evaluation=evaluation,
    inference=inference,
    head_labels=lambda state: len(REWARD_LABEL),
)
