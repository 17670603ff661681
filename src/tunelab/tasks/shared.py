"""What several tasks use alike (no task imports from another task's module)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from tunelab.errors import TunelabError
from tunelab.tasks.base import Inference, TaskData, TaskEvaluation

if TYPE_CHECKING:
    from pathlib import Path

    from tunelab.config.schema import Recipe
    from tunelab.data.formats import Example
    from tunelab.data.split import Splits
    from tunelab.rewards.build import RewardContext
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
    # Merged weights generate as fast as the base; a judged evaluation (recipe rewards) keeps the adapter, since
    # its kl_to_reference scores the reference by switching the adapter off (evaluate/judged.py log_ratios).
    merged = not models.recipe.rewards
    return Inference(writes_text=True, load_base=models.causal_lm,
                     load_tuned=lambda: models.tuned(models.causal_lm, merged=merged))


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
                    forgetting_measure: str, strategy: str, writes_text: bool = True,
                    context: "RewardContext | None" = None) -> TaskEvaluation:
    """How a task that learns from preference pairs is evaluated: each model's `scorer(model, tokenizer, rows,
    max_length, batch_size, placement)` margin of chosen over rejected on the held-out pairs. A model that writes
    text (`writes_text`) is also judged by DPO's implicit reward (its margin against the base model's) and, where
    the recipe has rewards, by its answers to the pairs' prompts (evaluate/judged.py)."""
    from tunelab.evaluate.judged import JUDGED_METRICS, judge, prepare_judging
    from tunelab.evaluate.plan import plan_evaluation

    check_pairs(test, source, task)
    judging = prepare_judging(recipe, test, source, context=context) if writes_text and recipe.rewards else None
    provided = ("implicit_reward_accuracy",) if writes_text else ()
    plan = plan_evaluation("preference", [example.chosen for example in test], [example.where for example in test],
                           recipe.eval, recipe.objective, source=source,
                           provided=provided + (JUDGED_METRICS if judging else ()))
    max_length, batch_size = recipe.data.max_length, recipe.eval.batch_size

    def answer(model: Any, tok: Any, placement: Any) -> Any:
        outputs = scorer(model, tok, test, max_length, batch_size, placement)
        return judge(model, tok, judging, placement, outputs) if judging else outputs

    return TaskEvaluation(plan=plan, answer=answer, prompts=[last_user_message(example.messages) for example in test],
                          forgetting_measure=forgetting_measure,
                          decoding={"strategy": strategy, "batch_size": batch_size,
                                    **(judging.decoding() if judging else {})}, judging=judging)


def prompt_evaluation(recipe: "Recipe", test: list["Example"], source: str, task: str,
                      context: "RewardContext | None" = None) -> TaskEvaluation:
    """How a task that learns from prompts and rewards (grpo, rloo, ppo) is evaluated: each model answers the
    held-out prompts greedily and the recipe's rewards judge the answers: win rate against the base model (the
    headline), mean reward, answer length, KL to the reference (evaluate/judged.py). Preference and feedback rows'
    prompts count as prompts. Forgetting: perplexity, as for every causal LM."""
    from tunelab.evaluate.judged import JUDGED_METRICS, judged_outputs, prepare_judging
    from tunelab.evaluate.plan import plan_evaluation

    if not recipe.rewards:
        raise TunelabError(f"task {task} is evaluated by the recipe's rewards on its answers; give `rewards:` (a "
                           "grader or a file.py:function)")
    judging = prepare_judging(recipe, test, source, context=context)
    plan = plan_evaluation("prompt", [""] * len(test), [example.where for example in test], recipe.eval,
                           recipe.objective, source=source, provided=JUDGED_METRICS)

    def answer(model: Any, tok: Any, placement: Any) -> Any:
        return judged_outputs(model, tok, judging, placement)

    return TaskEvaluation(plan=plan, answer=answer, prompts=[last_user_message(prompt) for prompt in judging.prompts],
                          forgetting_measure="perplexity",
                          decoding={"strategy": "greedy", "max_new_tokens": judging.max_new_tokens,
                                    "batch_size": judging.batch_size, "kv_cache": True, "padding": "left",
                                    **judging.decoding()}, judging=judging)


# How a language model ranks a held-out pair, as the evaluation's decoding records it.
PAIR_SCORING = ("log-probabilities of the chosen and the rejected answer, summed over their tokens (nothing is "
                "generated)")


def pair_task_evaluation(task: str) -> Callable[..., TaskEvaluation]:
    """The `evaluation` of a task that trains a language model on pairs (dpo, orpo, simpo): pair_evaluation by
    the log-probability margin, forgetting as perplexity."""

    def evaluation(recipe: "Recipe", test: list["Example"], state: dict[str, Any], tokenizer: Any,
                   source: str = "test split", context: "RewardContext | None" = None) -> TaskEvaluation:
        from tunelab.evaluate.preference import preference_outputs

        return pair_evaluation(recipe, test, source, task, preference_outputs, "perplexity", PAIR_SCORING,
                               context=context)

    return evaluation


def prompt_task_evaluation(task: str) -> Callable[..., TaskEvaluation]:
    """The `evaluation` of a task that learns from prompts and rewards (grpo, rloo, ppo): prompt_evaluation."""

    def evaluation(recipe: "Recipe", test: list["Example"], state: dict[str, Any], tokenizer: Any,
                   source: str = "test split", context: "RewardContext | None" = None) -> TaskEvaluation:
        return prompt_evaluation(recipe, test, source, task, context)

    return evaluation


def trl_trainer(parts: "TrainerParts", trainer_class: Any, arguments: Any, **extra: Any) -> Any:
    """One of TRL's offline trainers (DPO, KTO, ORPO, CPO, Reward) on the task's data with the shared callbacks. A
    reference adapter TRL copied is dropped (drop_reference_adapter); TRL's printer is removed: it prints raw log
    dicts, and the progress callback shows them instead."""
    from transformers import PrinterCallback

    trainer = trainer_class(model=parts.model, args=arguments, train_dataset=parts.data.train,
                            eval_dataset=parts.data.validation, processing_class=parts.tokenizer,
                            callbacks=parts.callbacks, **extra)
    drop_reference_adapter(trainer.model)
    trainer.remove_callback(PrinterCallback)
    return trainer


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
    evaluation compares with), which a freshly initialised adapter equals anyway; without the copy TRL disables the
    adapter for the reference, and
    the saved run and its checkpoints hold the one adapter that was trained."""
    from accelerate.utils import is_peft_model

    if is_peft_model(model) and "ref" in model.peft_config:
        model.delete_adapter("ref")
        model.set_adapter("default")


# ---- online RL (grpo, rloo, ppo): prompt rows, judged by the recipe's rewards -------------------------------------


def check_prompts(examples: list["Example"], source: str, task: str) -> None:
    """An online RL task's splits hold prompt rows only (the doctor checks the training split's kinds)."""
    for example in examples:
        if example.kind != "prompt":
            raise TunelabError(f"{example.where}: a '{example.kind}' row in the {source}; task {task} trains and is "
                               "evaluated on prompt rows (a prompt and the fields its rewards read) only")


def reward_columns(example: "Example") -> dict[str, Any]:
    """A prompt row's fields as the rewards read them (`{{ item.x }}`, a function's columns), with `where`, which
    names the row in a reward's error line."""
    return {**(example.extra or {}), "where": example.where}


def check_recipe_rewards(recipe: "Recipe", splits: "Splits", task: str,
                         context: "RewardContext | None" = None) -> None:
    """Before anything is written: the task has rewards, each grader reads fields every row has, and each reward
    function's file imports and takes TRL's arguments (reward_funcs loads them)."""
    from tunelab.rewards.build import check_rewards, reward_funcs

    if not recipe.rewards:
        raise TunelabError(f"rewards: task {task} learns from what its rewards say of its answers, and the recipe "
                           "names none; add a grader or a file.py:function under rewards:")
    rows = [reward_columns(example) for _, examples in splits.items() for example in examples]
    check_rewards(recipe.rewards, rows, context=context)
    reward_funcs(recipe.rewards, context=context)


def saved_rewards(state: dict[str, Any], context: "RewardContext | None" = None) -> list[Any]:
    """The recipe's rewards as the task state keeps them (JSON), as TRL reward_funcs again."""
    from pydantic import TypeAdapter

    from tunelab.rewards.build import RewardSpec, reward_funcs

    return reward_funcs(TypeAdapter(list[RewardSpec]).validate_python(state["rewards"]), context=context)


def prompt_data(inputs: "TaskInputs", task: str, prompt_of: Any, answer_tokens: int,
                state: dict[str, Any]) -> TaskData:
    """Prompt rows as a dataset of `prompt` (what `prompt_of(messages, tokenizer)` makes of the row's messages) and
    the row's fields; a prompt whose tokens leave fewer than `answer_tokens` of data.max_length is left out and
    counted (its answer could not be generated). The task state keeps the rewards, so the trainer is built from it."""
    from datasets import Dataset

    from tunelab.run.record import SplitCounts

    recipe, splits = inputs.recipe, inputs.prepared.splits()
    for name, examples in splits.items():
        check_prompts(examples, f"{name} split", task)
    check_recipe_rewards(recipe, splits, task, inputs.rewards_context)
    datasets, counts = {}, {}
    for name, examples in splits.items():
        kept, tokens = [], 0
        for example in examples:
            length = len(prompt_ids(inputs.tokenizer, example.messages))
            if length + answer_tokens <= recipe.data.max_length:
                kept.append({"prompt": prompt_of(example.messages, inputs.tokenizer), **reward_columns(example)})
                tokens += length
        datasets[name] = Dataset.from_list(kept) if kept else None
        counts[name] = SplitCounts(rows=len(examples), kept=len(kept), dropped_overlong=len(examples) - len(kept),
                                   tokens=tokens)
    return TaskData(splits=splits, train=datasets["train"], validation=datasets["validation"], counts=counts,
                    collator=None, padding_free=False,
                    state={**state, "rewards": [spec.model_dump(mode="json") for spec in recipe.rewards]})


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The prompt's tokens as the model sees them before it answers (chat template, generation prompt)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def check_generation_batches(recipe: "Recipe", num_generations: int, has_validation: bool, task: str) -> None:
    """TRL samples num_generations answers per prompt and needs whole groups in each generation batch
    (train.batch_size * train.grad_accum answers) and, with validation rows, in each evaluation batch."""
    train = recipe.train
    if (train.batch_size * train.grad_accum) % num_generations:
        raise TunelabError(f"task.num_generations: {num_generations} answers per prompt do not divide a generation "
                           f"batch of train.batch_size * train.grad_accum = {train.batch_size * train.grad_accum} "
                           f"answers (task {task}); make the batch a multiple of {num_generations}")
    if has_validation and train.batch_size % num_generations:
        raise TunelabError(f"task.num_generations: {num_generations} answers per prompt do not divide an "
                           f"evaluation batch of train.batch_size = {train.batch_size} (task {task} with validation "
                           f"rows); make train.batch_size a multiple of {num_generations}")


def conversational_prompt(messages: list[dict[str, str]], tokenizer: Any) -> list[dict[str, str]]:
    """TRL's conversational prompt: the messages as they are (TRL renders them with the model's chat template)."""
    return messages


def online_prepare(inputs: "TaskInputs", task: str) -> TaskData:
    """The training data of a TRL online trainer's task (grpo, rloo): conversational prompts, whole groups of
    num_generations answers in each batch."""
    options = inputs.recipe.task
    data = prompt_data(inputs, task, conversational_prompt, options.max_completion_length,
                       options.model_dump(exclude={"name"}))
    check_generation_batches(inputs.recipe, options.num_generations, data.validation is not None, task)
    return data


def trl_online_trainer(parts: "TrainerParts", trainer_class: Any, config_class: Any) -> Any:
    """TRL's GRPOTrainer or RLOOTrainer from the shared arguments, the task's options and the recipe's rewards.
    The reference (beta > 0) is the policy with its adapter disabled, as for dpo: TRL's copy of the adapter is
    dropped; with full fine-tuning TRL loads a frozen copy of the base checkpoint."""
    from transformers import PrinterCallback

    options = {key: value for key, value in parts.data.state.items() if key != "rewards"}
    # Answers are generated inside the trainer: there are no input_ids in a batch for the Trainer to count.
    arguments = config_class(**{**parts.arguments, "include_num_input_tokens_seen": "no"}, **options)
    rewards = saved_rewards(parts.data.state, parts.rewards_context)
    trainer = trainer_class(model=parts.model, reward_funcs=rewards, args=arguments,
                            train_dataset=parts.data.train, eval_dataset=parts.data.validation,
                            processing_class=parts.tokenizer, callbacks=parts.callbacks)
    drop_reference_adapter(trainer.model)
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; the progress callback shows them instead
    return trainer
