"""Classification: a recipe with `task: classification` in, a run folder out.

Two styles (`classification.style`):
  head      the base model with a classification head over the labels (AutoModelForSequenceClassification:
            encoders such as minilm-l6-v2, or a causal LM's last token), trained with the recipe's method.
  generate  a causal LM fine-tuned to answer the label (train/sft.py on rows turned into conversations);
            evaluation scores only the label set (evaluate/classification.py).
As in sft.py, everything that can fail on the user's input is checked before the run folder is touched.
"""

from __future__ import annotations

from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console

from tunelab.config.schema import ClassificationSection, Recipe
from tunelab.data.cache import prepare_data
from tunelab.data.formats import Example, with_system
from tunelab.data.prepare import LoadedData, TokenizedSplit
from tunelab.data.split import Splits
from tunelab.errors import TunelabError
from tunelab.methods.base import check_merge_request
from tunelab.methods.registry import get_method
from tunelab.models.classifier import is_causal_lm_checkpoint, load_sequence_classifier
from tunelab.models.load import resolve_model
from tunelab.models.tokenizer import load_tokenizer
from tunelab.runs import RunDir, new_record, prepare_run_dir
from tunelab.train.precision import device_type, resolve_precision


def train(recipe: Recipe, home: Path, console: Console, resume: bool = False, overwrite: bool = False,
          callbacks: tuple = ()) -> RunDir:
    ref = resolve_model(recipe.model.name, home, console=console)
    style = resolve_style(recipe.classification.style, ref.path, recipe.model.name)
    if style == "generate":
        from tunelab.train import sft

        convert = partial(to_conversations, options=recipe.classification, system=recipe.data.system_prompt)
        run = sft.train(recipe, home, console, resume=resume, overwrite=overwrite, callbacks=callbacks,
                        convert=convert)
        record = run.read_record()
        from tunelab.data.prepare import read_splits

        record["classification"] = {"style": style, "labels": class_labels(read_splits(run.data),
                                                                           recipe.classification)}
        run.write_record(record)
        return run
    return train_head(recipe, ref, home, console, resume, overwrite, callbacks)


def resolve_style(style: str, folder: Path, name: str) -> str:
    causal = is_causal_lm_checkpoint(folder)
    if style == "auto":
        return "generate" if causal else "head"
    if style == "generate" and not causal:
        raise TunelabError(f"classification.style: generate needs a causal LM, and '{name}' is not one; use head")
    return style


def answer(example: Example) -> str:
    """The class of a row: a label row's label, or a converted row's assistant answer."""
    if example.kind == "label":
        return example.label
    if example.kind == "chat" and example.messages[-1]["role"] == "assistant":
        return example.messages[-1]["content"]
    raise TunelabError(f"{example.where}: task classification needs label rows (text, label), not {example.kind} rows")


def class_labels(splits: Splits, options: ClassificationSection) -> list[str]:
    """The classes: the recipe's, or the training split's sorted; any held-out label outside them is an error."""
    labels = options.labels or sorted({answer(example) for example in splits.train})
    if len(labels) < 2:
        raise TunelabError(f"data: the training split holds only the class {labels}; classification needs two or more")
    for _, examples in splits.items():
        for example in examples:
            if answer(example) not in labels:
                raise TunelabError(f"{example.where}: label '{answer(example)}' is not one of the classes "
                                   f"({', '.join(labels)}); set classification.labels or fix the row")
    return labels


def user_message(options: ClassificationSection, labels: list[str], text: str) -> str:
    # str.replace, not str.format: a user's prompt may contain other braces (JSON examples, say).
    return options.prompt.replace("{labels}", ", ".join(labels)).replace("{text}", text)


def to_conversations(loaded: LoadedData, options: ClassificationSection, system: str | None) -> LoadedData:
    """Label rows as conversations whose answer is the label (what a causal LM is fine-tuned on)."""
    labels = class_labels(loaded.splits, options)

    def convert(example: Example) -> Example:
        messages = with_system(system, [{"role": "user", "content": user_message(options, labels, example.text)},
                                        {"role": "assistant", "content": example.label}])
        return Example(source=example.source, line=example.line, messages=messages)

    splits = Splits(**{name: [convert(example) for example in examples] for name, examples in loaded.splits.items()})
    return LoadedData(splits, loaded.files, loaded.generated_rows)


def encode_rows(examples: list[Example], tokenizer: Any, labels: list[str],
                max_length: int) -> tuple[Any, TokenizedSplit]:
    """Token ids, attention masks and class ids of label rows; rows over max_length are cut (and counted)."""
    from datasets import Dataset

    texts = [example.text for example in examples]
    encoded = tokenizer(texts, truncation=False)["input_ids"] if texts else []  # a split may be empty
    truncated = sum(len(ids) > max_length for ids in encoded)
    input_ids = [ids[:max_length] for ids in encoded]
    counts = TokenizedSplit(kept=len(examples), truncated=truncated, tokens=sum(map(len, input_ids)))
    dataset = Dataset.from_dict({"input_ids": input_ids, "attention_mask": [[1] * len(ids) for ids in input_ids],
                                 "labels": [labels.index(example.label) for example in examples]})
    return dataset, counts


def train_head(recipe: Recipe, ref: Any, home: Path, console: Console, resume: bool, overwrite: bool,
               callbacks: tuple) -> RunDir:
    from transformers import set_seed

    from tunelab.train.sft import (
        check_run_dir,
        check_same_data,
        describe_run,
        train_and_save,
        write_run_start,
    )

    root = Path(recipe.output.dir)
    prior = check_run_dir(root, resume, overwrite, recipe)
    method = get_method(recipe.method.name)
    check_merge_request(method, "merge" in recipe.output.model_fields_set and recipe.output.merge)
    tokenizer = load_tokenizer(ref.path)
    # The data doctor (cleaning, dedup, contamination), cached, as for every other task. Label rows are not rendered
    # with a chat template, so there are no stop ids to check and the template lint skips them.
    prepared = prepare_data(recipe.data, tokenizer, set(), None, home)
    loaded = prepared.loaded()
    if prior is not None:
        check_same_data(prior, loaded)
    labels = class_labels(loaded.splits, recipe.classification)
    encoded = {name: encode_rows(examples, tokenizer, labels, recipe.data.max_length)
               for name, examples in loaded.splits.items()}
    device = device_type()
    precision = resolve_precision(recipe.train.precision, device)
    set_seed(recipe.train.seed)
    model = load_sequence_classifier(ref.path, labels, tokenizer.pad_token_id, recipe.train.seed)
    model = method.wrap(model, recipe.method)

    run = prepare_run_dir(root, resume, overwrite)
    record = prior or new_record("classification", recipe.model_dump(mode="json"))
    record.update(describe_run(ref, loaded, {name: counts for name, (_, counts) in encoded.items()}, model, recipe,
                               device, precision))
    train_counts = dict(Counter(example.label for example in loaded.splits.train))
    record.update(padding_free=False, classification={"style": "head", "labels": labels, "train_counts": train_counts})
    write_run_start(run, record, recipe, prepared, console)
    build = partial(head_trainer, recipe, run, model, tokenizer, encoded, device, precision, console, callbacks)
    train_and_save(build, method, tokenizer, run, record, recipe, console, resume)
    return run


def head_trainer(recipe: Recipe, run: RunDir, model: Any, tokenizer: Any, encoded: dict[str, Any], device: str,
                 precision: str, console: Console, callbacks: tuple) -> Any:
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, PrinterCallback, Trainer

    from tunelab.train.callbacks import JsonlLog
    from tunelab.train.progress import RichProgress
    from tunelab.train.sft import training_arguments

    train_rows, _ = encoded["train"]
    validation_rows, validation_counts = encoded["validation"]
    has_validation = validation_counts.kept > 0
    extra = [RichProgress(console), JsonlLog(run.train_log), *callbacks]
    if recipe.train.early_stopping_patience:
        extra.append(EarlyStoppingCallback(early_stopping_patience=recipe.train.early_stopping_patience))
    trainer = Trainer(
        model=model,
        args=training_arguments(recipe.train, run, device, precision, has_validation),
        data_collator=DataCollatorWithPadding(tokenizer),
        train_dataset=train_rows,
        eval_dataset=validation_rows if has_validation else None,
        processing_class=tokenizer,
        callbacks=extra,
    )
    trainer.remove_callback(PrinterCallback)
    return trainer
