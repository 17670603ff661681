"""What several tasks use alike (no task imports from another task's module)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunelab.errors import TunelabError
from tunelab.tasks.base import Inference, TaskEvaluation

if TYPE_CHECKING:
    from pathlib import Path

    from tunelab.config.schema import Recipe
    from tunelab.data.formats import Example
    from tunelab.run.models import RunModels
    from tunelab.tasks.base import TrainerParts


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
                    forgetting_measure: str, strategy: str, writes_text: bool = True) -> TaskEvaluation:
    """How a task that learns from preference pairs is evaluated: each model's `scorer(model, tokenizer, rows,
    max_length, batch_size, placement)` margin of chosen over rejected on the held-out pairs. A model that writes
    text (`writes_text`) is also judged by DPO's implicit reward (its margin against the base model's) and, where
    the recipe has rewards, by its answers to the pairs' prompts (evaluate/judged.py)."""
    from tunelab.evaluate.judged import JUDGED_METRICS, judge, prepare_judging
    from tunelab.evaluate.plan import plan_evaluation

    check_pairs(test, source, task)
    judging = prepare_judging(recipe, test, source) if writes_text and recipe.rewards else None
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
                                    **(judging.decoding() if judging else {})})


def prompt_evaluation(recipe: "Recipe", test: list["Example"], source: str, task: str) -> TaskEvaluation:
    """How a task that learns from prompts and rewards (grpo, rloo, ppo) is evaluated: each model answers the
    held-out prompts greedily and the recipe's rewards judge the answers: win rate against the base model (the
    headline), mean reward, answer length, KL to the reference (evaluate/judged.py). Preference and feedback rows'
    prompts count as prompts. Forgetting: perplexity, as for every causal LM."""
    from tunelab.evaluate.judged import JUDGED_METRICS, judged_outputs, prepare_judging
    from tunelab.evaluate.plan import plan_evaluation

    if not recipe.rewards:
        raise TunelabError(f"task {task} is evaluated by the recipe's rewards on its answers; give `rewards:` (a "
                           "grader or a file.py:function)")
    judging = prepare_judging(recipe, test, source)
    plan = plan_evaluation("prompt", [""] * len(test), [example.where for example in test], recipe.eval,
                           recipe.objective, source=source, provided=JUDGED_METRICS)

    def answer(model: Any, tok: Any, placement: Any) -> Any:
        return judged_outputs(model, tok, judging, placement)

    return TaskEvaluation(plan=plan, answer=answer, prompts=[last_user_message(prompt) for prompt in judging.prompts],
                          forgetting_measure="perplexity",
                          decoding={"strategy": "greedy", "max_new_tokens": judging.max_new_tokens,
                                    "batch_size": judging.batch_size, "kv_cache": True, "padding": "left",
                                    **judging.decoding()})
