"""Classification: learn the `label` of label rows (text, label), evaluated with accuracy, per-class and macro
precision/recall/F1 and MCC, with intervals, flips, the majority class as the floor, and forgetting.

Two styles (`task.style`), each a `Style` below, so nothing else branches on which one a run used:
  head      the base model with a classification head over the labels (AutoModelForSequenceClassification:
            encoders such as minilm-l6-v2, or a causal LM's last token), trained with the recipe's method; it
            answers with the arg-max class, and its forgetting is measured as hidden-state drift
  generate  a causal LM fine-tuned to answer the label (rows turned into conversations); evaluation scores only
            the label set (evaluate/answers.py label_answers), and its forgetting is measured by perplexity
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import Field, model_validator

from tunelab.data.formats import Example, with_system
from tunelab.data.split import Splits
from tunelab.errors import TunelabError
from tunelab.tasks.base import Inference, Task, TaskConfig, TaskData, TaskEvaluation, TaskInputs
from tunelab.tasks.shared import causal_lm, language_model_inference, last_user_message, plain_trainer

if TYPE_CHECKING:
    from pathlib import Path

    from tunelab.config.schema import Recipe
    from tunelab.rewards.build import RewardContext
    from tunelab.run.models import RunModels


class ClassificationConfig(TaskConfig):
    name: Literal["classification"] = "classification"
    style: Literal["auto", "head", "generate"] = Field(
        "auto", description="head: a classification head on the model's last hidden state (encoders such as "
        "minilm-l6-v2, or a causal LM); generate: a causal LM fine-tuned to answer the label, decoded over the label "
        "set only; auto: generate for a causal LM checkpoint, head otherwise."
    )
    labels: list[str] | None = Field(
        None, description="The classes, in the order of reports and confusion matrices; default: the labels found "
        "in the training split, sorted. A held-out row with another label is an error."
    )
    prompt: str = Field(
        "Classify the text into one of these classes: {labels}. Answer with the class only.\n\nText: {text}",
        description="style generate: the user message built from each row ({labels}: the classes, comma-separated; "
        "{text}: the row's text). The model answers with the label.",
    )

    @model_validator(mode="after")
    def prompt_has_text(self) -> "ClassificationConfig":
        if "{text}" not in self.prompt:
            raise ValueError("task.prompt must contain {text}, where each row's text goes")
        if self.labels is not None and len(set(self.labels)) < 2:
            raise ValueError("task.labels needs at least two different classes")
        return self


def class_labels(splits: Splits, options: ClassificationConfig) -> list[str]:
    """The classes: the recipe's, or the training split's sorted; any held-out label outside them is an error."""
    labels = options.labels or sorted({example.label for example in splits.train})
    if len(labels) < 2:
        raise TunelabError(f"data: the training split holds only the class {labels}; classification needs two or more")
    for _, examples in splits.items():
        for example in examples:
            if example.label not in labels:
                raise TunelabError(f"{example.where}: label '{example.label}' is not one of the classes "
                                   f"({', '.join(labels)}); set task.labels or fix the row")
    return labels


def user_message(options: ClassificationConfig, labels: list[str], text: str) -> str:
    # str.replace, not str.format: a user's prompt may contain other braces (JSON examples, say).
    return options.prompt.replace("{labels}", ", ".join(labels)).replace("{text}", text)


# ---- the two styles ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Style:
    name: str
    prepare: Callable[[TaskInputs, Splits, list[str]], TaskData]
    load_model: Callable[["Path", list[str], "Recipe", Any], Any]
    # (test rows, labels, recipe) -> references, the prompts shown, and answer(model, tokenizer, placement)
    evaluation: Callable[[list[Example], list[str], "Recipe"], tuple[list[str], list[str], Callable]]
    forgetting_measure: str
    decoding: str
    inference: Callable[["RunModels", list[str]], Inference]


def head_prepare(inputs: TaskInputs, splits: Splits, labels: list[str]) -> TaskData:
    from transformers import DataCollatorWithPadding

    encoded = {name: encode_label_rows(examples, inputs.tokenizer, labels, inputs.recipe.data.max_length)
               for name, examples in splits.items()}
    validation = encoded["validation"][0] if splits.validation else None
    return TaskData(splits=splits, train=encoded["train"][0], validation=validation,
                    counts={name: counts for name, (_, counts) in encoded.items()},
                    collator=DataCollatorWithPadding(inputs.tokenizer), padding_free=False)


def encode_label_rows(examples: list[Example], tokenizer: Any, labels: list[str], max_length: int) -> tuple[Any, Any]:
    """Token ids, attention masks and class ids of label rows; rows over max_length are cut (and counted)."""
    from datasets import Dataset

    from tunelab.run.record import SplitCounts

    texts = [example.text for example in examples]
    encoded = tokenizer(texts, truncation=False)["input_ids"] if texts else []  # a split may be empty
    truncated = sum(len(ids) > max_length for ids in encoded)
    input_ids = [ids[:max_length] for ids in encoded]
    counts = SplitCounts(rows=len(examples), kept=len(examples), truncated=truncated,
                         tokens=sum(map(len, input_ids)))
    dataset = Dataset.from_dict({"input_ids": input_ids, "attention_mask": [[1] * len(ids) for ids in input_ids],
                                 "labels": [labels.index(example.label) for example in examples]})
    return dataset, counts


def head_model(checkpoint: "Path", labels: list[str], recipe: "Recipe", tokenizer: Any) -> Any:
    from tunelab.models.classifier import load_sequence_classifier

    return load_sequence_classifier(checkpoint, labels, tokenizer.pad_token_id, recipe.train.seed)


def head_evaluation(test: list[Example], labels: list[str], recipe: "Recipe") -> tuple[list[str], list[str], Any]:
    from tunelab.evaluate.answers import head_answers

    references, texts = [example.label for example in test], [example.text for example in test]
    options = recipe.eval

    def answer(model: Any, tokenizer: Any, placement: Any) -> Any:
        return head_answers(model, tokenizer, texts, labels, references, recipe.data.max_length, options.batch_size,
                            placement)

    return references, texts, answer


def head_inference(models: "RunModels", labels: list[str]) -> Inference:
    from tunelab.evaluate.answers import head_answers
    from tunelab.models.classifier import load_sequence_classifier

    def load_base() -> Any:  # the base model with the same freshly initialised head training started from
        model = load_sequence_classifier(models.base_path(), labels, models.tokenizer().pad_token_id,
                                         models.recipe.train.seed)
        return models.placement.place(model).eval()

    def classify(model: Any, tokenizer: Any, texts: list[str]) -> list[str]:
        return head_answers(model, tokenizer, texts, labels, None, models.recipe.data.max_length,
                            models.recipe.eval.batch_size, models.placement).predictions

    return Inference(writes_text=False, load_base=load_base, load_tuned=lambda: models.tuned(load_base),
                     classify=classify, instead=f"its model is a classifier with a head and writes no text; use "
                                               f"tunelab classify {models.run.root} TEXT")


def generate_prepare(inputs: TaskInputs, splits: Splits, labels: list[str]) -> TaskData:
    from tunelab.data.dataset import tokenize_examples
    from tunelab.train.batches import language_model_data

    options, data = inputs.recipe.task, inputs.recipe.data
    converted = Splits(**{name: [as_conversation(example, options, labels, data.system_prompt) for example in rows]
                          for name, rows in splits.items()})
    tokenized = {name: tokenize_examples(rows, inputs.tokenizer, inputs.stop_ids, data.max_length, data.overlong)
                 for name, rows in converted.items()}
    return language_model_data(converted, tokenized, inputs.tokenizer.pad_token_id, inputs.padding_free)


def as_conversation(example: Example, options: ClassificationConfig, labels: list[str],
                    system: str | None) -> Example:
    """A label row as the conversation a causal LM is fine-tuned on: the prompt, answered with the label."""
    messages = with_system(system, [{"role": "user", "content": user_message(options, labels, example.text)},
                                    {"role": "assistant", "content": example.label}])
    return Example(source=example.source, line=example.line, messages=messages)


def generate_evaluation(test: list[Example], labels: list[str],
                        recipe: "Recipe") -> tuple[list[str], list[str], Any]:
    from tunelab.evaluate.answers import label_answers

    # The run's test rows are the conversations it trained on: the prompt, then the label as the answer.
    references = [example.messages[-1]["content"] for example in test]
    prompts = [example.messages[:-1] for example in test]

    def answer(model: Any, tokenizer: Any, placement: Any) -> Any:
        return label_answers(model, tokenizer, prompts, labels, references, recipe.eval.batch_size, placement)

    return references, [last_user_message(prompt) for prompt in prompts], answer


def generate_inference(models: "RunModels", labels: list[str]) -> Inference:
    from tunelab.evaluate.answers import label_answers

    options, system = models.recipe.task, models.recipe.data.system_prompt

    def classify(model: Any, tokenizer: Any, texts: list[str]) -> list[str]:
        prompts = [with_system(system, [{"role": "user", "content": user_message(options, labels, text)}])
                   for text in texts]
        return label_answers(model, tokenizer, prompts, labels, [labels[0]] * len(texts),
                             models.recipe.eval.batch_size, models.placement).predictions

    inference = language_model_inference(models)
    inference.classify = classify
    return inference


STYLES = {
    style.name: style
    for style in (
        Style("head", head_prepare, head_model, head_evaluation, "drift", "the class with the highest head logit",
              head_inference),
        Style("generate", generate_prepare, causal_lm, generate_evaluation, "perplexity",
              "the class whose answer the model finds most probable (decoding restricted to the classes)",
              generate_inference),
    )
}


def resolve_style(requested: str, checkpoint: "Path", model_name: str) -> Style:
    from tunelab.models.classifier import is_causal_lm_checkpoint

    causal = is_causal_lm_checkpoint(checkpoint)
    if requested == "auto":
        return STYLES["generate" if causal else "head"]
    if requested == "generate" and not causal:
        raise TunelabError(f"task.style: generate needs a causal LM, and '{model_name}' is not one; use head")
    return STYLES[requested]


# ---- the task -----------------------------------------------------------------------------------------------------


def prepare(inputs: TaskInputs) -> TaskData:
    splits = inputs.prepared.splits()
    labels = class_labels(splits, inputs.recipe.task)
    style = resolve_style(inputs.recipe.task.style, inputs.checkpoint, inputs.recipe.model.name)
    data = style.prepare(inputs, splits, labels)
    data.state = {"style": style.name, "labels": labels,
                  "train_counts": dict(Counter(example.label for example in splits.train))}
    return data


def load_model(checkpoint: "Path", data: TaskData, recipe: "Recipe", tokenizer: Any) -> Any:
    return STYLES[data.state["style"]].load_model(checkpoint, data.state["labels"], recipe, tokenizer)


def evaluation(recipe: "Recipe", test: list[Example], state: dict[str, Any], tokenizer: Any,
               source: str = "test split", context: "RewardContext | None" = None) -> TaskEvaluation:
    from tunelab.evaluate.plan import plan_evaluation

    style, labels = STYLES[state["style"]], state["labels"]
    references, prompts, answer = style.evaluation(test, labels, recipe)
    plan = plan_evaluation("label", references, [example.where for example in test], recipe.eval, recipe.objective,
                           labels=tuple(labels), source=source)
    majority = Counter(state["train_counts"]).most_common(1)[0][0]
    return TaskEvaluation(plan=plan, answer=answer, prompts=prompts, forgetting_measure=style.forgetting_measure,
                          decoding={"strategy": style.decoding, "batch_size": recipe.eval.batch_size},
                          reference_points={"majority": [majority] * len(test)})


def inference(models: "RunModels") -> Inference:
    state = models.record.task_state
    return STYLES[state["style"]].inference(models, state["labels"])


TASK = Task(
    name="classification",
    config_class=ClassificationConfig,
    summary="Learn the label of (text, label) rows, with a classification head or by answering the label; "
            "evaluated by accuracy, F1 and MCC against the base and the majority class.",
    row_kinds=("label",),
    prepare=prepare,
    load_model=load_model,
    build_trainer=plain_trainer,
    evaluation=evaluation,
    inference=inference,
    head_labels=lambda state: len(state["labels"]) if state["style"] == "head" else None,
)
