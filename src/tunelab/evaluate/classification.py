"""`tunelab eval` for classification runs: base and tuned model predict the class of every held-out row.

A head classifier predicts the arg-max of its logits. A causal LM tuned to answer the label is decoded over the
label set only: each class is scored by the log-probability of the whole answer (the label and the end-of-turn
token, under the chat template used in training), and the best-scoring class is the prediction. So an answer
outside the label set is impossible, and a label that is a prefix of another ("spam" / "spammy") is told apart.
The majority class of the training split is reported as the floor every model must beat.
"""

from __future__ import annotations

import gc
from collections import Counter
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

from tunelab.data.prepare import read_splits
from tunelab.data.templates import encode_conversation, stop_token_ids
from tunelab.errors import TunelabError
from tunelab.evaluate.loss import row_losses
from tunelab.evaluate.metrics import label_metrics
from tunelab.files import write_json, write_jsonl
from tunelab.inference import RunModels
from tunelab.methods.registry import get_method
from tunelab.models.load import model_stop_ids
from tunelab.train.classify import answer

SUMMARY_METRICS = ("accuracy", "precision", "recall", "f1", "mcc")


def predict_with_head(model: Any, tokenizer: Any, texts: list[str], labels: list[str], max_length: int,
                      batch_size: int, bf16: bool) -> list[str]:
    import torch

    device = next(model.parameters()).device
    predictions = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt")
        batch.pop("token_type_ids", None)  # not every base model takes them; a single-segment input needs none
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(**{key: value.to(device) for key, value in batch.items()}).logits
        predictions += [labels[index] for index in logits.argmax(dim=-1).tolist()]
    return predictions


def predict_by_label_scores(model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]],
                            labels: list[str], batch_size: int, bf16: bool) -> list[str]:
    """For each prompt, the label whose answer tokens the model finds most probable (restricted decoding)."""
    stop_ids = stop_token_ids(tokenizer, model_stop_ids(model))
    rows = [encode_conversation(tokenizer, prompt + [{"role": "assistant", "content": label}], stop_ids)
            for prompt in conversations for label in labels]
    losses = row_losses(model, rows, tokenizer.pad_token_id, batch_size=batch_size, autocast_bf16=bf16)
    predictions = []
    for index in range(len(conversations)):
        scores = [losses[index * len(labels) + offset][0] for offset in range(len(labels))]
        predictions.append(labels[min(range(len(labels)), key=scores.__getitem__)])
    return predictions


def classifier_loaders(models: RunModels, style: str, labels: list[str], pad_id: int) -> dict[str, Callable]:
    if style == "generate":
        return {"base": models.base, "tuned": models.tuned}
    from tunelab.models.classifier import load_sequence_classifier

    def base() -> Any:  # the base model with the same freshly initialised head training started from
        return load_sequence_classifier(models.base_path(), labels, pad_id, models.recipe.train.seed).eval()

    method = get_method(models.recipe.method.name)
    return {"base": base, "tuned": lambda: method.load(base, models.run.model).eval()}


def evaluate_classification(models: RunModels, console: Console, max_rows: int | None = None,
                            which: tuple[str, ...] = ("base", "tuned")) -> dict[str, Any]:
    """Metrics of base and tuned model (or only those in `which`; eval.json is written when both ran)."""
    info = models.record.get("classification")
    if not info:
        raise TunelabError(f"{models.run.root}: the run records no classes (was its training completed?)")
    style, labels = info["style"], info["labels"]
    splits = read_splits(models.run.data)
    test = splits.test[: max_rows or models.recipe.eval.max_rows]
    if not test:
        raise TunelabError(f"{models.run.root}: the run has no test rows to evaluate on (data.test or data.split.test)")
    references = [answer(example) for example in test]
    tokenizer = models.tokenizer()
    bf16 = models.record.get("precision") == "bf16"
    batch_size = models.recipe.eval.batch_size
    console.print(f"[bold]eval[/bold] {len(test)} test rows, {style} classifier over {len(labels)} classes")

    def predict(model: Any) -> list[str]:
        if style == "head":
            return predict_with_head(model, tokenizer, [example.text for example in test], labels,
                                     models.recipe.data.max_length, batch_size, bf16)
        prompts = [example.messages[:-1] for example in test]
        return predict_by_label_scores(model, tokenizer, prompts, labels, batch_size, bf16)

    predictions, results = {}, {}
    for name, load in classifier_loaders(models, style, labels, tokenizer.pad_token_id).items():
        if name not in which:
            continue
        model = load()
        predictions[name] = predict(model)
        del model
        gc.collect()
        results[name] = label_metrics(predictions[name], references, labels)
    majority = Counter(answer(example) for example in splits.train).most_common(1)[0][0]
    results["majority"] = label_metrics([majority] * len(test), references, labels)
    report = {"task": "classification", "style": style, "rows": len(test), "labels": labels,
              "majority_class": majority, **results}
    if set(which) != {"base", "tuned"}:
        return report
    report["delta"] = {key: results["tuned"][key] - results["base"][key] for key in SUMMARY_METRICS}
    write_json(models.run.eval_json, report)
    write_jsonl(models.run.eval_worst, misclassified(test, references, predictions, models.recipe.eval.worst_examples))
    return report


def misclassified(test: list, references: list[str], predictions: dict[str, list[str]], count: int) -> list[dict]:
    wrong = [i for i in range(len(test)) if predictions["tuned"][i] != references[i]]
    return [{"source": test[i].where, "text": test[i].text or test[i].messages[-2]["content"],
             "reference": references[i], "base": predictions["base"][i], "tuned": predictions["tuned"][i]}
            for i in wrong[:count]]


def classification_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"base vs tuned on {report['rows']} held-out rows ({report['style']} classifier)")
    for column in ("metric", "majority", "base", "tuned", "change"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    rows = [(key, lambda r, k=key: r[k]) for key in SUMMARY_METRICS]
    rows += [(f"f1 {label}", lambda r, k=label: r["per_class"][k]["f1"]) for label in report["labels"]]
    for name, value in rows:
        base, tuned = value(report["base"]), value(report["tuned"])
        delta = tuned - base
        colour = "green" if delta > 0 else "red" if delta < 0 else "white"
        table.add_row(name, f"{value(report['majority']):.4f}", f"{base:.4f}", f"{tuned:.4f}",
                      f"[{colour}]{delta:+.4f}[/{colour}]")
    return table


def confusion_text(report: dict[str, Any], model: str = "tuned") -> str:
    labels = report["labels"]
    width = max(len(label) for label in labels) + 2
    lines = [f"confusion ({model}; rows: true class, columns: predicted)", " " * width + "".join(
        f"{label:>{width}}" for label in labels)]
    for label, counts in zip(labels, report[model]["confusion"]):
        lines.append(f"{label:<{width}}" + "".join(f"{count:>{width}}" for count in counts))
    return "\n".join(lines)
