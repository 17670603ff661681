"""Supervised fine-tuning of a causal LM: learn to write the answers of conversation rows (chat, prompt/completion,
alpaca, sharegpt), or continue pre-training on plain text rows (loss on every token).

Rows arrive tokenized from the data doctor with their loss masks. A run on conversations is evaluated by the
answers base and tuned model write to the held-out prompts (greedy, the same decoding for both); a run on text by
the loss and perplexity of both on the held-out text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from tunelab.errors import TunelabError
from tunelab.tasks.base import Task, TaskConfig, TaskData, TaskEvaluation, TaskInputs
from tunelab.tasks.shared import causal_lm, language_model_inference, last_user_message, plain_trainer

if TYPE_CHECKING:
    from tunelab.config.schema import Recipe
    from tunelab.rewards.build import RewardContext


class SftConfig(TaskConfig):
    name: Literal["sft"] = "sft"


def prepare(inputs: TaskInputs) -> TaskData:
    from tunelab.train.batches import language_model_data

    return language_model_data(inputs.prepared.splits(), inputs.prepared.tokenized(), inputs.tokenizer.pad_token_id,
                               inputs.padding_free)


def test_kind(test: list[Any], source: str) -> str:
    kinds = sorted({example.kind for example in test})
    if len(kinds) > 1:
        raise TunelabError(f"{source}: test rows mix kinds ({', '.join(kinds)}); evaluation needs one kind")
    return kinds[0] if kinds else "chat"


def evaluation(recipe: "Recipe", test: list[Any], state: dict[str, Any], tokenizer: Any,
               source: str = "test split", context: "RewardContext | None" = None) -> TaskEvaluation:
    from tunelab.data.templates import prompt_and_reference
    from tunelab.evaluate.answers import generated_answers, text_losses
    from tunelab.evaluate.judged import JUDGED_METRICS, judge, prepare_judging
    from tunelab.evaluate.plan import plan_evaluation

    options, max_length = recipe.eval, recipe.data.max_length
    where = [example.where for example in test]
    if test_kind(test, source) == "text":
        plan = plan_evaluation("text", [""] * len(test), where, options, recipe.objective, source=source)
        texts = [example.text for example in test]
        return TaskEvaluation(
            plan=plan, answer=lambda model, tok, placement: text_losses(model, tok, texts, max_length, placement),
            prompts=[text[:400] for text in texts], forgetting_measure="perplexity",
            decoding={"strategy": "teacher-forced loss on the whole text (no answer is generated)"})
    pairs = [prompt_and_reference(example.messages) for example in test]
    references = [reference for _, reference in pairs]
    longest = max((len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in references), default=0)
    # The same cap for both models: room for twice the longest reference, so a right answer is never cut off.
    max_new_tokens = min(options.max_new_tokens, 2 * longest + 16)
    # With rewards, the answers are also judged by them (evaluate/judged.py), as they are written here.
    judging = prepare_judging(recipe, test, source, references, max_new_tokens, context) if recipe.rewards else None
    plan = plan_evaluation("chat", references, where, options, recipe.objective, source=source,
                           provided=JUDGED_METRICS if judging else ())
    conversations, prompts = [example.messages for example in test], [prompt for prompt, _ in pairs]

    def answer(model: Any, tok: Any, placement: Any) -> Any:
        outputs = generated_answers(model, tok, conversations, prompts, max_new_tokens, options.batch_size,
                                    max_length, placement)
        return judge(model, tok, judging, placement, outputs, answered=True) if judging else outputs

    return TaskEvaluation(plan=plan, answer=answer, prompts=[last_user_message(prompt) for prompt in prompts],
                          forgetting_measure="perplexity",
                          decoding={"strategy": "greedy", "max_new_tokens": max_new_tokens,
                                    "batch_size": options.batch_size, "kv_cache": True, "padding": "left",
                                    **(judging.decoding() if judging else {})},
                          judging=judging)


TASK = Task(
    name="sft",
    config_class=SftConfig,
    summary="Learn to write the answers of conversation rows, or continue pre-training on text rows; evaluated by "
            "the answers (or text loss) of base and tuned on held-out rows.",
    row_kinds=("chat", "text"),
    prepare=prepare,
    load_model=causal_lm,
    build_trainer=plain_trainer,
    evaluation=evaluation,
    inference=language_model_inference,
)
