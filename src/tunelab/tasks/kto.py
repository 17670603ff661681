"""Kahneman-Tversky optimisation (KTO): learn from completions judged one at a time, desirable or not (feedback
rows: a prompt, a completion, a label), to raise the desirable ones and lower the others relative to a frozen
reference, with TRL's KTOTrainer. Preference rows are taken too, unpaired: the chosen answer becomes a desirable
completion of its prompt and the rejected one an undesirable completion.

The reference is the starting model: with an adapter, the same model with the adapter disabled (TRL's copy of the
adapter into a 'ref' one is dropped, as for dpo), so no second copy of the weights is held; with full fine-tuning
TRL loads a frozen copy. KTO's reference point is an estimate of the KL divergence of the policy from the reference,
which TRL computes from mismatched pairs inside each batch (each prompt with the previous row's completion); so the
batch must hold more than one row, and TRL reads the rows in order, never shuffling them: they are shuffled here,
once, with train.seed (otherwise a pair's two unpaired halves would sit side by side, and the mismatched pair would
be a matched one). The training rows must hold both desirable and undesirable completions.

Evaluation follows the test rows: preference pairs are evaluated as dpo's are (`preference_accuracy`,
`mean_margin`); feedback rows by `feedback_margin`, each completion's mean log-probability per token, + for a
desirable one and - for an undesirable one, base vs tuned (evaluate/preference.py `feedback_outputs`). The tuned
model writes text, served and exported as an SFT run is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from tunelab.errors import TunelabError
from tunelab.tasks.base import Task, TaskConfig, TaskData, TaskEvaluation, TaskInputs, TrainerParts
from tunelab.tasks.shared import (
    PAIR_SCORING,
    causal_lm,
    language_model_inference,
    last_user_message,
    pair_evaluation,
    trl_trainer,
)

if TYPE_CHECKING:
    from tunelab.config.schema import Recipe
    from tunelab.data.formats import Example
    from tunelab.rewards.build import RewardContext

ROW_KINDS = ("feedback", "preference")


class KtoConfig(TaskConfig):
    name: Literal["kto"] = "kto"
    beta: float = Field(0.1, gt=0, le=100, description="How far the tuned model may move from the reference: higher "
                        "keeps it closer (TRL's KTOConfig.beta).")
    desirable_weight: float = Field(1.0, gt=0, le=100, description="Weight of the loss on desirable completions; "
                                    "with more undesirable than desirable rows, raise it so that weight times count "
                                    "is 1 to 1.33 times the undesirable side's (the KTO paper's advice).")
    undesirable_weight: float = Field(1.0, gt=0, le=100, description="Weight of the loss on undesirable completions "
                                      "(the other side of desirable_weight).")


def unpaired(example: "Example") -> list[tuple[list[dict[str, str]], str, bool]]:
    """A row as (prompt, completion, desirable): a feedback row as it is, a pair as its two halves (as TRL's
    unpair_preference_dataset makes them; done here so the counts and checks see the rows TRL trains on)."""
    if example.kind == "preference":
        return [(example.messages, example.chosen, True), (example.messages, example.rejected, False)]
    return [(example.messages, example.completion, bool(example.desirable))]


def check_rows(examples: list["Example"], source: str) -> None:
    for example in examples:
        if example.kind not in ROW_KINDS:
            raise TunelabError(f"{example.where}: a '{example.kind}' row in the {source}; task kto trains and is "
                               "evaluated on feedback rows (prompt, completion, label) or preference rows only")


def encode_split(examples: list["Example"], tokenizer: Any, max_length: int, overlong: str,
                 seed: int | None) -> tuple[Any, Any, dict[bool, int]]:
    """The completions as TRL's conversational unpaired examples, shuffled with `seed` (None: in order), their
    counts, and how many of each label were kept. A completion longer than max_length is cut from its end (as TRL's
    collator cuts it) or, with data.overlong: drop, left out; one whose prompt alone fills max_length is left out
    either way (TRL drops it too)."""
    import random

    from datasets import Dataset

    from tunelab.evaluate.preference import answer_encodings
    from tunelab.run.record import SplitCounts

    kept, dropped, truncated, tokens, answer_tokens = [], 0, 0, 0, 0
    for prompt, completion, desirable in (half for example in examples for half in unpaired(example)):
        (full,), prompt_length = answer_encodings(tokenizer, prompt, [completion], max_length=10**9)
        if prompt_length >= max_length or (len(full.input_ids) > max_length and overlong == "drop"):
            dropped += 1
            continue
        truncated += len(full.input_ids) > max_length
        tokens += min(len(full.input_ids), max_length)
        answer_tokens += min(len(full.input_ids), max_length) - prompt_length
        kept.append({"prompt": prompt, "completion": [{"role": "assistant", "content": completion}],
                     "label": desirable})
    if seed is not None:
        random.Random(seed).shuffle(kept)
    labels = {True: sum(row["label"] for row in kept), False: sum(not row["label"] for row in kept)}
    counts = SplitCounts(rows=len(examples), kept=len(kept), dropped_overlong=dropped, truncated=truncated,
                         tokens=tokens, label_tokens=answer_tokens)
    return (Dataset.from_list(kept) if kept else None), counts, labels


def prepare(inputs: TaskInputs) -> TaskData:
    splits, recipe = inputs.prepared.splits(), inputs.recipe
    if recipe.train.batch_size < 2:
        raise TunelabError(f"train.batch_size: {recipe.train.batch_size}; task kto needs 2 or more (it estimates "
                           "its KL reference point from mismatched pairs of rows within each batch)")
    for name, examples in splits.items():
        check_rows(examples, f"{name} split")
    encoded = {name: encode_split(examples, inputs.tokenizer, recipe.data.max_length, recipe.data.overlong,
                                  recipe.train.seed if name == "train" else None)
               for name, examples in splits.items()}
    labels = encoded["train"][2]
    for desirable, kind in ((True, "desirable"), (False, "undesirable")):
        if not labels[desirable]:
            other = labels[not desirable]
            raise TunelabError(f"train split: {other} completion(s), all {'un' if desirable else ''}desirable and no "
                               f"{kind} one; task kto learns from both (give feedback rows labelled "
                               f"{str(desirable).lower()} too, or preference rows)")
    options = recipe.task
    return TaskData(splits=splits, train=encoded["train"][0], validation=encoded["validation"][0],
                    counts={name: counts for name, (_, counts, _) in encoded.items()}, collator=None,
                    padding_free=False,
                    state={"beta": options.beta, "desirable_weight": options.desirable_weight,
                           "undesirable_weight": options.undesirable_weight, "max_length": recipe.data.max_length,
                           "desirable_rows": labels[True], "undesirable_rows": labels[False]})


def build_trainer(parts: TrainerParts) -> Any:
    """TRL's KTOTrainer from the shared arguments and callbacks; ref_model=None as for dpo (tasks/dpo.py)."""
    from trl import KTOConfig, KTOTrainer

    state = parts.data.state
    arguments = KTOConfig(**parts.arguments, beta=state["beta"], desirable_weight=state["desirable_weight"],
                          undesirable_weight=state["undesirable_weight"], max_length=state["max_length"])
    return trl_trainer(parts, KTOTrainer, arguments, ref_model=None)


def evaluation(recipe: "Recipe", test: list["Example"], state: dict[str, Any], tokenizer: Any,
               source: str = "test split", context: "RewardContext | None" = None) -> TaskEvaluation:
    from tunelab.evaluate.preference import preference_outputs

    check_rows(test, source)
    kinds = {example.kind for example in test}
    if kinds == {"preference"}:
        return pair_evaluation(recipe, test, source, "kto", preference_outputs, "perplexity", PAIR_SCORING,
                               context=context)
    if kinds == {"feedback", "preference"}:
        raise TunelabError(f"{source}: both feedback and preference rows; task kto evaluates one kind at a time "
                           "(give data.test with one kind)")
    return feedback_evaluation(recipe, test, source, context)


def feedback_evaluation(recipe: "Recipe", test: list["Example"], source: str,
                        context: "RewardContext | None" = None) -> TaskEvaluation:
    """Each model's signed mean log-probability of the held-out completions (`feedback_margin`) and, where the
    recipe has rewards, its answers to the rows' prompts judged by them (evaluate/judged.py)."""
    from tunelab.evaluate.judged import JUDGED_METRICS, judge, prepare_judging
    from tunelab.evaluate.plan import plan_evaluation
    from tunelab.evaluate.preference import feedback_outputs

    judging = prepare_judging(recipe, test, source, context=context) if recipe.rewards else None
    plan = plan_evaluation("feedback", [example.completion for example in test], [example.where for example in test],
                           recipe.eval, recipe.objective, source=source,
                           provided=JUDGED_METRICS if judging else ())
    max_length, batch_size = recipe.data.max_length, recipe.eval.batch_size

    def answer(model: Any, tok: Any, placement: Any) -> Any:
        outputs = feedback_outputs(model, tok, test, max_length, batch_size, placement)
        return judge(model, tok, judging, placement, outputs) if judging else outputs

    return TaskEvaluation(plan=plan, answer=answer, prompts=[last_user_message(example.messages) for example in test],
                          forgetting_measure="perplexity",
                          decoding={"strategy": "log-probability of each completion per token, + desirable, "
                                                "- undesirable", "batch_size": batch_size,
                                    **(judging.decoding() if judging else {})},
                          judging=judging)


TASK = Task(
    name="kto",
    config_class=KtoConfig,
    summary="Learn from completions judged desirable or not (feedback rows, or pairs unpaired) to raise the "
            "desirable ones relative to the starting model (TRL's KTO); evaluated on held-out pairs as dpo is, or "
            "on feedback rows by the signed log-probability of their completions.",
    row_kinds=ROW_KINDS,
    prepare=prepare,
    load_model=causal_lm,
    build_trainer=build_trainer,
    evaluation=evaluation,
    inference=language_model_inference,
)
