"""Metrics for base-vs-tuned comparison, each a plain function of predictions and references.

Row-level functions live here; registry.py turns them (and sacrebleu, rouge-score, scikit-learn) into metrics with
per-row statistics that the bootstrap can resample.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from typing import Any


def exact_match(prediction: str, reference: str) -> bool:
    return prediction.strip() == reference.strip()


def normalize_text(text: str) -> str:
    """Unicode NFKC, case-folded, whitespace runs as one space, no surrounding space and no final full stop.

    Looser than exact match on what does not change meaning (case, spacing, a closing period); punctuation inside
    the text is kept, since in code or JSON it does change meaning.
    """
    text = re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold()).strip()
    return text[:-1].rstrip() if text.endswith(".") else text


def normalized_match(prediction: str, reference: str) -> bool:
    return normalize_text(prediction) == normalize_text(reference)


def json_fields_matched(prediction: str, reference: str) -> tuple[int, int, dict[str, bool]]:
    """(fields right, fields in the reference, right per field) for a reference that is a JSON object.

    A prediction that is not a JSON object gets every field wrong; extra keys in the prediction are not counted.
    """
    reference_value = json.loads(reference)
    ok, predicted = parse_json(prediction)
    if not ok or not isinstance(predicted, dict):
        predicted = {}
    right = {key: key in predicted and predicted[key] == value for key, value in reference_value.items()}
    return sum(right.values()), len(right), right


def references_are_json_objects(references: list[str]) -> bool:
    return references_are_json(references) and all(isinstance(json.loads(r), dict) for r in references)


def parse_json(text: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(text.strip())
    except (json.JSONDecodeError, ValueError):
        return False, None


def references_are_json(references: list[str]) -> bool:
    return bool(references) and all(parse_json(reference)[0] for reference in references)


def text_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Exact match for every task; valid-JSON rate and JSON equality when the references are JSON."""
    count = len(references)
    metrics = {"exact_match": sum(map(exact_match, predictions, references)) / count}
    if references_are_json(references):
        parsed = [parse_json(prediction) for prediction in predictions]
        metrics["valid_json"] = sum(ok for ok, _ in parsed) / count
        metrics["json_match"] = sum(
            ok and value == json.loads(reference) for (ok, value), reference in zip(parsed, references)
        ) / count
    return metrics


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else math.inf


def label_metrics(predictions: list[str], references: list[str], labels: list[str] | None = None) -> dict[str, Any]:
    """Classification metrics (scikit-learn): accuracy, macro precision/recall/F1 and per class, MCC, confusion.

    `labels` fixes the class order (rows and columns of the confusion matrix); a prediction outside it (a model
    that answered something else) counts as wrong for every class.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, matthews_corrcoef, precision_recall_fscore_support

    labels = labels or sorted(set(references))
    precision, recall, f1, support = precision_recall_fscore_support(
        references, predictions, labels=labels, zero_division=0
    )
    macro = precision_recall_fscore_support(references, predictions, labels=labels, average="macro", zero_division=0)
    return {
        "accuracy": accuracy_score(references, predictions),
        "precision": macro[0],  # macro averages: the names the metric registry and objectives use
        "recall": macro[1],
        "f1": macro[2],
        "mcc": matthews_corrcoef(references, predictions),
        "per_class": {
            label: {"precision": p, "recall": r, "f1": f, "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support)
        },
        "labels": labels,
        "confusion": confusion_matrix(references, predictions, labels=labels).tolist(),
    }
