"""What several tasks use alike (no task imports from another task's module)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunelab.errors import TunelabError
from tunelab.tasks.base import Inference, TaskData, TaskEvaluation

if TYPE_CHECKING:
    from pathlib import Path

    from tunelab.config.schema import Recipe
    from tunelab.data.formats import Example
    from tunelab.run.models import RunModels
    from tunelab.tasks.base import TaskInputs, TrainerParts


def causal_lm(checkpoint: "Path", *_: Any) -> Any:
    """The base checkpoint as a causal LM: the model a task trains when it trains a language model as it is."""
    from tunelab.models.load import load_causal_lm

    return load_causal_lm(checkpoint)


def plain_trainer(parts: "TrainerParts") -> Any:
    """transformers' Trainer on the task's data (imported when a run starts, not when the registry loads)."""
    from tunelab.train.trainer import plain_trainer as build

    return build(parts)


def language_model_inference(models: "RunModels") -> Inference:
    """A run whose tuned model is a causal LM: it writes text; base and tuned load as causal LMs."""
    return Inference(writes_text=True, load_base=models.causal_lm, load_tuned=lambda: models.tuned(models.causal_lm))


def last_user_message(messages: list[dict[str, str]]) -> str:
    """What a conversation's prompt asks, as a report shows it: its last user turn."""
    users = [message["content"] for message in messages if message["role"] == "user"]
    return users[-1] if users else ""


def check_pairs(examples: list["Example"], source: str, task: str) -> None:
    """A preference task's splits hold preference rows only (the doctor checks the training split's kinds)."""
    for example in examples:
        if example.kind != "preference":
            raise TunelabError(f"{example.where}: a '{example.kind}' row in the {source}; task {task} trains and is "
                               "evaluated on preference rows (prompt, chosen, rejected) only")


def pair_evaluation(recipe: "Recipe", test: list["Example"], source: str, task: str, scorer: Any,
                    forgetting_measure: str, strategy: str) -> TaskEvaluation:
    """How a task that learns from preference pairs is evaluated: each model's `scorer(model, tokenizer, rows,
    max_length, batch_size, placement)` margin of chosen over rejected on the held-out pairs."""
    from tunelab.evaluate.plan import plan_evaluation

    check_pairs(test, source, task)
    plan = plan_evaluation("preference", [example.chosen for example in test], [example.where for example in test],
                           recipe.eval, recipe.objective, source=source)
    max_length, batch_size = recipe.data.max_length, recipe.eval.batch_size

    def answer(model: Any, tok: Any, placement: Any) -> Any:
        return scorer(model, tok, test, max_length, batch_size, placement)

    return TaskEvaluation(plan=plan, answer=answer, prompts=[last_user_message(example.messages) for example in test],
                          forgetting_measure=forgetting_measure,
                          decoding={"strategy": strategy, "batch_size": batch_size})


def conversational(example: "Example") -> dict[str, Any]:
    """A preference row as TRL's conversational preference example."""
    return {"prompt": example.messages, "chosen": [{"role": "assistant", "content": example.chosen}],
            "rejected": [{"role": "assistant", "content": example.rejected}]}


def encode_pairs(examples: list["Example"], tokenizer: Any, max_length: int, overlong: str) -> tuple[Any, Any]:
    """The pairs as a dataset for TRL, and their counts. A pair longer than max_length is cut from its end (as TRL's
    collator cuts it) or, with data.overlong: drop, left out; a pair whose prompt alone fills max_length is left out
    either way (no answer token would remain)."""
    from datasets import Dataset

    from tunelab.evaluate.preference import answer_encodings
    from tunelab.run.record import SplitCounts

    kept, dropped, truncated, tokens, answer_tokens = [], 0, 0, 0, 0
    for example in examples:
        full, prompt_length = answer_encodings(tokenizer, example.messages, [example.chosen, example.rejected],
                                               max_length=10**9)
        longest = max(len(encoded.input_ids) for encoded in full)
        if prompt_length >= max_length or (longest > max_length and overlong == "drop"):
            dropped += 1
            continue
        truncated += longest > max_length
        kept.append(conversational(example))
        tokens += sum(min(len(encoded.input_ids), max_length) for encoded in full)
        answer_tokens += sum(max(0, min(len(encoded.input_ids), max_length) - prompt_length) for encoded in full)
    counts = SplitCounts(rows=len(examples), kept=len(kept), dropped_overlong=dropped, truncated=truncated,
                         tokens=tokens, label_tokens=answer_tokens)
    return (Dataset.from_list(kept) if kept else None), counts


def prepare_pairs(inputs: "TaskInputs", task: str, options: dict[str, Any]) -> TaskData:
    """The training data of a task that learns from preference pairs through a TRL trainer (dpo, orpo, simpo):
    every split checked to hold pairs only, encoded as TRL's conversational pairs; the task's `options` and the
    data's max_length are what the run records it decided (task_state)."""
    splits, data = inputs.prepared.splits(), inputs.recipe.data
    for name, examples in splits.items():
        check_pairs(examples, f"{name} split", task)
    encoded = {name: encode_pairs(examples, inputs.tokenizer, data.max_length, data.overlong)
               for name, examples in splits.items()}
    return TaskData(splits=splits, train=encoded["train"][0], validation=encoded["validation"][0],
                    counts={name: counts for name, (_, counts) in encoded.items()}, collator=None,
                    padding_free=False, state={**options, "max_length": data.max_length})


def pair_batch_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """The shared training arguments for TRL's older pair trainers (ORPO, CPO), whose batches hold chosen_input_ids
    and rejected_input_ids and no input_ids: transformers cannot count the tokens seen in them (it warns at every
    step and counts none), so the count is not asked for and the run records none."""
    return {**arguments, "include_num_input_tokens_seen": "no"}


def drop_reference_adapter(model: Any) -> None:
    """Given a model that already carries an adapter, TRL's DPOTrainer and KTOTrainer copy it into a second adapter
    named 'ref' and score the reference with that copy. The reference here is the base model (the same one
    evaluation compares with), which a freshly initialised adapter equals anyway; without the copy TRL disables the adapter for the reference, and
    the saved run and its checkpoints hold the one adapter that was trained."""
    from accelerate.utils import is_peft_model

    if is_peft_model(model) and "ref" in model.peft_config:
        model.delete_adapter("ref")
        model.set_adapter("default")
