"""The metrics a recipe can ask for (`eval.metrics`), which rows each fits, and the defaults per data format.

Every metric is computed from per-row statistics summed over the rows, so the bootstrap (evaluate/bootstrap.py) can
resample rows and recompute any metric exactly, corpus metrics included: a rate is (hit, 1) per row, loss is (summed
loss, tokens), corpus BLEU and chrF use sacrebleu's own sufficient statistics (matched and total n-grams, lengths), and
label metrics a one-hot cell of the confusion matrix. The values come from the libraries (sacrebleu, rouge-score,
scikit-learn's definitions); tests/unit/test_registry.py checks each against them.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from typing import Any, Callable

from tunelab.errors import TunelabError
from tunelab.metrics import rows as row_metrics

# A generated answer that is none of the classes (the confusion matrix's last column).
OTHER_LABEL = "(other)"


@dataclass(frozen=True)
class RowInputs:
    """What the metrics of one model are computed from, row by row."""

    predictions: list[str]
    references: list[str]
    losses: list[tuple[float, int]] | None = None  # teacher-forced (summed loss, answer tokens) per row
    labels: tuple[str, ...] = ()  # class order for label metrics
    margins: list[float] | None = None  # preference pairs: log p(chosen) - log p(rejected), per row
    # Generated answers judged by the recipe's rewards (evaluate/judged.py), per row: the answer's summed reward,
    # its length in tokens, and log p_model(answer) - log p_reference(answer) summed over its tokens.
    rewards: list[float] | None = None
    answer_tokens: list[int] | None = None
    log_ratios: list[float] | None = None
    # The opponent: the model compared with on the same rows (the evaluator passes the base model's, to both models).
    opponent_rewards: list[float] | None = None
    opponent_margins: list[float] | None = None


@dataclass(frozen=True)
class Metric:
    name: str
    # loss | text | json | json_object | generation | label | preference | judged | implicit: which rows it fits
    family: str
    description: str
    unit: str  # rate (0-1, shown in %), score (as the library gives it), loss
    higher_is_better: bool
    row_stats: Callable[[RowInputs], Any]  # (rows, k) numpy array
    score: Callable[[Any], float]  # from the statistics summed over rows
    scale: float = 1.0  # the best score (100 for sacrebleu's BLEU and chrF): decides how many decimals are shown
    judged: bool = True  # False: shown, never called better or worse (answer length); an objective may bound it only


def as_array(rows: list[list[float]]) -> Any:
    import numpy as np

    return np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)


def rate_stats(hit: Callable[[str, str], bool]) -> Callable[[RowInputs], Any]:
    return lambda inputs: as_array([[float(hit(p, r)), 1.0] for p, r in zip(inputs.predictions, inputs.references)])


def ratio(summed: Any) -> float:
    return float(summed[0] / summed[1]) if summed[1] else math.nan


def loss_stats(inputs: RowInputs) -> Any:
    if inputs.losses is None:
        raise TunelabError("loss needs teacher-forced losses, and these rows have none")
    return as_array([[total, count] for total, count in inputs.losses])


def perplexity_score(summed: Any) -> float:
    return row_metrics.perplexity(ratio(summed)) if summed[1] else math.nan


def valid_json_hit(prediction: str, reference: str) -> bool:
    return row_metrics.parse_json(prediction)[0]


def json_match_hit(prediction: str, reference: str) -> bool:
    ok, value = row_metrics.parse_json(prediction)
    return ok and value == json.loads(reference)


def json_field_stats(inputs: RowInputs) -> Any:
    return as_array([list(row_metrics.json_fields_matched(p, r)[:2]) for p, r in zip(inputs.predictions,
                                                                                       inputs.references)])


def sacrebleu_metric(name: str) -> Any:
    import sacrebleu

    return sacrebleu.BLEU() if name == "bleu" else sacrebleu.CHRF()


def sacrebleu_stats(name: str) -> Callable[[RowInputs], Any]:
    # sacrebleu's per-segment sufficient statistics (what its own paired bootstrap resamples); summing them and
    # scoring the sum is exactly corpus_score.
    def stats(inputs: RowInputs) -> Any:
        metric = sacrebleu_metric(name)
        return as_array(metric._extract_corpus_statistics(inputs.predictions, [inputs.references]))

    return stats


def sacrebleu_score(name: str) -> Callable[[Any], float]:
    metric = sacrebleu_metric(name)
    return lambda summed: float(metric._compute_score_from_stats([int(round(value)) for value in summed]).score)


def rouge_stats(kind: str) -> Callable[[RowInputs], Any]:
    """Mean ROUGE F-measure over rows (rouge-score, no stemming), as each row's (F, 1)."""

    def stats(inputs: RowInputs) -> Any:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer([kind], use_stemmer=False)
        return as_array([[scorer.score(r, p)[kind].fmeasure, 1.0] for p, r in zip(inputs.predictions,
                                                                                     inputs.references)])

    return stats


def margin_stats(hit: bool) -> Callable[[RowInputs], Any]:
    """Per pair (margin > 0, 1) for the rate of pairs ranked as the data ranks them, else (margin, 1)."""

    def stats(inputs: RowInputs) -> Any:
        if inputs.margins is None:
            raise TunelabError("preference metrics need each pair's log-probability margin, and these rows have none")
        return as_array([[float(margin > 0) if hit else margin, 1.0] for margin in inputs.margins])

    return stats


def outcome(mine: float, theirs: float) -> float:
    """A row's result against the opponent: 1 a win, 0.5 a tie, 0 a loss."""
    return 1.0 if mine > theirs else 0.5 if mine == theirs else 0.0


def needs(values: list[Any] | None, what: str) -> list[Any]:
    if values is None:
        raise TunelabError(f"this metric needs {what}, and these rows have none")
    return values


def per_row_stats(values: Callable[[RowInputs], list[float]]) -> Callable[[RowInputs], Any]:
    """(value, 1) per row: the metric is the mean over rows."""
    return lambda inputs: as_array([[float(value), 1.0] for value in values(inputs)])


def win_stats(inputs: RowInputs) -> Any:
    """Per row (outcome of this model's reward against the opponent's, 1). Against itself every row ties: 0.5."""
    mine = needs(inputs.rewards, "each answer's reward (the recipe's rewards)")
    theirs = needs(inputs.opponent_rewards, "the opponent's rewards on the same rows")
    return as_array([[outcome(a, b), 1.0] for a, b in zip(mine, theirs)])


def implicit_stats(inputs: RowInputs) -> Any:
    """Per pair (outcome of this model's log-probability margin against the reference's, 1): DPO's implicit reward
    of an answer is beta * (log p_model - log p_reference), so the chosen answer's beats the rejected one's exactly
    when the model's margin exceeds the reference's (beta > 0 cancels). The reference against itself has implicit
    reward 0 for both answers: a tie on every pair, 0.5, chance; so the change, tuned - base, is the gain over
    chance. (TRL's training log counts such a tie as wrong, so it starts at 0, not 0.5.)"""
    mine = needs(inputs.margins, "each pair's log-probability margin")
    theirs = needs(inputs.opponent_margins, "the reference model's margins on the same pairs")
    return as_array([[outcome(a, b), 1.0] for a, b in zip(mine, theirs)])


def feedback_stats(inputs: RowInputs) -> Any:
    """Per feedback row (its signed mean log-probability per completion token, 1): see evaluate/preference.py
    feedback_outputs, which puts the signed value where a pair's margin goes."""
    if inputs.margins is None:
        raise TunelabError("feedback metrics need each row's signed log-probability, and these rows have none")
    return as_array([[margin, 1.0] for margin in inputs.margins])


def label_of(prediction: str, labels: tuple[str, ...]) -> str:
    text = prediction.strip()
    return text if text in labels else OTHER_LABEL


def label_stats(inputs: RowInputs) -> Any:
    """One-hot confusion cells: row i is 1 at (true class, predicted class or 'other'), flattened k x (k+1)."""
    import numpy as np

    labels = inputs.labels
    width = len(labels) + 1
    index = {label: position for position, label in enumerate(labels)}
    cells = np.zeros((len(inputs.references), len(labels) * width))
    for row, (prediction, reference) in enumerate(zip(inputs.predictions, inputs.references)):
        predicted = label_of(prediction, labels)
        column = index[predicted] if predicted in index else len(labels)
        cells[row, index[reference.strip()] * width + column] = 1.0
    return cells


def confusion_from(summed: Any) -> Any:
    """The k x (k+1) confusion matrix (true class by predicted class, last column 'other') from summed cells."""
    k = int(round((math.sqrt(1 + 4 * len(summed)) - 1) / 2))
    return summed.reshape(k, k + 1)


def per_class_scores(confusion: Any) -> tuple[Any, Any, Any]:
    """Precision, recall and F1 per class with scikit-learn's zero_division=0 convention."""
    import numpy as np

    k = confusion.shape[0]
    hits = np.diag(confusion[:, :k])
    predicted = confusion[:, :k].sum(axis=0)
    actual = confusion.sum(axis=1)
    precision = np.divide(hits, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(hits, actual, out=np.zeros(k), where=actual > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros(k), where=total > 0)
    return precision, recall, f1


def accuracy_score(summed: Any) -> float:
    import numpy as np

    confusion = confusion_from(summed)
    total = confusion.sum()
    return float(np.trace(confusion[:, : confusion.shape[0]]) / total) if total else math.nan


def macro(which: int) -> Callable[[Any], float]:
    return lambda summed: float(per_class_scores(confusion_from(summed))[which].mean())


def mcc_score(summed: Any) -> float:
    """Matthews correlation, multiclass (Gorodkin's R_K, as scikit-learn computes it); 'other' is one more class."""
    import numpy as np

    confusion = confusion_from(summed)
    square = np.vstack([confusion, np.zeros((1, confusion.shape[1]))])
    actual, predicted = square.sum(axis=1), square.sum(axis=0)
    correct, samples = np.trace(square), square.sum()
    covariance = correct * samples - actual @ predicted
    denominator = (samples**2 - predicted @ predicted) * (samples**2 - actual @ actual)
    return float(covariance / math.sqrt(denominator)) if denominator > 0 else 0.0


METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric("loss", "loss", "mean teacher-forced cross-entropy on the answer tokens", "loss", False,
               loss_stats, ratio),
        Metric("perplexity", "loss", "exp(loss)", "loss", False, loss_stats, perplexity_score),
        Metric("exact_match", "text", "answer equals the reference (surrounding whitespace ignored)", "rate", True,
               rate_stats(row_metrics.exact_match), ratio),
        Metric("normalized_match", "text", "equal after case folding, whitespace collapsing, final period dropped",
               "rate", True, rate_stats(row_metrics.normalized_match), ratio),
        Metric("valid_json", "json", "answer parses as JSON", "rate", True, rate_stats(valid_json_hit), ratio),
        Metric("json_match", "json", "answer parses to the same JSON value as the reference", "rate", True,
               rate_stats(json_match_hit), ratio),
        Metric("json_field_accuracy", "json_object", "share of the reference's fields answered with the same value",
               "rate", True, json_field_stats, ratio),
        Metric("bleu", "generation", "corpus BLEU (sacrebleu, 13a tokenizer), 0-100", "score", True,
               sacrebleu_stats("bleu"), sacrebleu_score("bleu"), scale=100.0),
        Metric("chrf", "generation", "corpus chrF (sacrebleu), 0-100", "score", True,
               sacrebleu_stats("chrf"), sacrebleu_score("chrf"), scale=100.0),
        Metric("rouge1", "generation", "mean ROUGE-1 F (rouge-score), 0-1", "score", True,
               rouge_stats("rouge1"), ratio),
        Metric("rouge2", "generation", "mean ROUGE-2 F (rouge-score), 0-1", "score", True,
               rouge_stats("rouge2"), ratio),
        Metric("rougeL", "generation", "mean ROUGE-L F (rouge-score), 0-1", "score", True,
               rouge_stats("rougeL"), ratio),
        Metric("accuracy", "label", "share of rows given the right class", "rate", True, label_stats,
               accuracy_score),
        Metric("precision", "label", "macro-averaged precision over the classes", "rate", True, label_stats, macro(0)),
        Metric("recall", "label", "macro-averaged recall over the classes", "rate", True, label_stats, macro(1)),
        Metric("f1", "label", "macro-averaged F1 over the classes", "rate", True, label_stats, macro(2)),
        Metric("mcc", "label", "Matthews correlation coefficient, -1 to 1", "score", True, label_stats, mcc_score),
        Metric("preference_accuracy", "preference", "share of held-out pairs the model ranks the chosen answer "
               "above the rejected one (by summed log-probability; a reward model by its reward)", "rate", True,
               margin_stats(True), ratio),
        Metric("mean_margin", "preference", "mean of chosen minus rejected: log p(answer | prompt) in nats, or the "
               "reward model's rewards", "score", True, margin_stats(False), ratio),
        Metric("implicit_reward_accuracy", "implicit", "share of held-out pairs whose chosen answer gets the higher "
               "DPO implicit reward, beta * log(p_model / p_reference): the model's margin beats the base model's "
               "(the reference); a tie counts half, so the base model scores 0.5", "rate", True, implicit_stats,
               ratio),
        Metric("win_rate", "judged", "per prompt, this model's reward against the base model's on its own greedy "
               "answer: 1 a win, 0.5 a tie, 0 a loss; the base model ties itself (0.5), so the change is the tuned "
               "model's win rate over base minus 0.5", "rate", True, win_stats, ratio),
        Metric("mean_reward", "judged", "mean over prompts of the recipe's rewards (summed) on the model's greedy "
               "answer", "score", True, per_row_stats(lambda i: needs(i.rewards, "each answer's reward")), ratio),
        Metric("mean_answer_tokens", "judged", "mean tokens per greedy answer; shown, not judged: preference "
               "tuning often buys reward with length, so read a reward gain next to this", "tokens", False,
               per_row_stats(lambda i: needs(i.answer_tokens, "each answer's length")), ratio, judged=False),
        Metric("kl_to_reference", "judged", "mean over prompts of log p_model(answer) - log p_reference(answer), "
               "summed over the tokens of one answer sampled from the model (temperature 1, fixed seed): a "
               "Monte-Carlo estimate of KL(model || reference); the reference is the base model, so the base "
               "scores 0", "score", False,
               per_row_stats(lambda i: needs(i.log_ratios, "each answer's log-ratio to the reference")), ratio,
               judged=False),
        Metric("feedback_margin", "feedback", "mean over feedback rows of the completion's mean log-probability "
               "per token given the prompt, counted + for a desirable completion and - for an undesirable one "
               "(nats; higher: the model leans to the desirable answers and away from the others)", "score", True,
               feedback_stats, ratio),
    )
}

ALIASES = {"f1_macro": "f1", "precision_macro": "precision", "recall_macro": "recall", "em": "exact_match",
           "ppl": "perplexity", "rouge_l": "rougeL", "rougel": "rougeL", "chrf++": "chrf",
           "reward_accuracy": "preference_accuracy"}
METRIC_NAMES = tuple(METRICS)

# Which metric families each kind of test row supports (see data/formats.py Example.kind).
FAMILIES_BY_KIND = {
    "chat": ("loss", "text", "json", "json_object", "generation", "label"),
    "label": ("loss", "label"),
    "text": ("loss",),
    "preference": ("loss", "preference"),  # loss: on the chosen answer
    "prompt": ("judged",),  # a prompt alone: only answers judged by the rewards
    "feedback": ("loss", "feedback"),  # loss: on the desirable completions
}

# Families an evaluation computes only where its task provides them (`plan_metrics(..., provided=...)`): why not.
PROVIDED_FAMILIES = {
    "judged": "judges generated answers with the recipe's rewards; give `rewards:` (a task whose model writes text)",
    "implicit": "compares the tuned model's log-probability margins on preference pairs with the base model's; "
                "it applies to a task that trains a language model on pairs (dpo, ...)",
}


def resolve_name(name: str) -> str:
    """The metric a recipe names (aliases allowed), or a TunelabError with the closest valid name."""
    if name in METRICS:
        return name
    if name in ALIASES or name.lower() in ALIASES:
        return ALIASES.get(name, ALIASES.get(name.lower()))
    close = difflib.get_close_matches(name, [*METRICS, *ALIASES], n=1, cutoff=0.5)
    hint = f"; did you mean '{ALIASES.get(close[0], close[0])}'?" if close else ""
    raise TunelabError(f"unknown metric '{name}'{hint} (available: {', '.join(METRICS)})")


def looks_like_labels(references: list[str]) -> bool:
    """Short one-line answers from a small set, each used repeatedly: a classification asked as a question."""
    distinct = {reference.strip() for reference in references}
    return (1 < len(distinct) <= 20 and len(references) >= 2 * len(distinct)
            and all(len(label) <= 40 and "\n" not in label for label in distinct))


def default_metrics(kind: str, references: list[str]) -> list[str]:
    if kind == "label":
        return ["accuracy", "precision", "recall", "f1", "mcc"]
    if kind == "preference":
        return ["preference_accuracy", "mean_margin"]
    if kind == "feedback":
        return ["feedback_margin"]
    if kind != "chat":
        return []
    if row_metrics.references_are_json(references):
        extra = ["json_field_accuracy"] if row_metrics.references_are_json_objects(references) else []
        return ["exact_match", "normalized_match", "valid_json", "json_match", *extra]
    if looks_like_labels(references):
        return ["exact_match", "accuracy", "precision", "recall", "f1", "mcc"]
    return ["exact_match", "normalized_match", "bleu", "chrf", "rouge1", "rouge2", "rougeL"]


def suggestion(kind: str, references: list[str]) -> str:
    names = [name for name in default_metrics(kind, references) if name not in ("loss", "perplexity")]
    return f"use {', '.join(names)}" if names else "only loss and perplexity apply"


def check_fit(name: str, kind: str, references: list[str]) -> None:
    """Refuse a metric that does not fit the test rows (BLEU on labels, JSON metrics on prose), with a suggestion."""
    family = METRICS[name].family
    if family in PROVIDED_FAMILIES and family not in FAMILIES_BY_KIND.get(kind, ()):
        raise TunelabError(f"eval.metrics: '{name}' {PROVIDED_FAMILIES[family]}")
    if family not in FAMILIES_BY_KIND.get(kind, ()):
        what = {"label": "label rows (classification)", "text": "plain-text rows (no reference answers)"}
        raise TunelabError(f"eval.metrics: '{name}' does not fit {what.get(kind, kind + ' rows')}; "
                           f"{suggestion(kind, references)}")
    if family in ("json", "json_object"):
        for position, reference in enumerate(references):
            ok, value = row_metrics.parse_json(reference)
            if not ok or (family == "json_object" and not isinstance(value, dict)):
                shape = "JSON" if family == "json" else "a JSON object"
                raise TunelabError(f"eval.metrics: '{name}' needs reference answers that are {shape}, and test row "
                                   f"{position + 1}'s is not; {suggestion(kind, references)}")


def plan_metrics(requested: list[str] | None, objective_metric: str | None, kind: str,
                 references: list[str], provided: tuple[str, ...] = ()) -> list[str]:
    """The metrics to compute: loss and perplexity always (every task scores each row's reference: an answer, a
    class, or the text itself; a prompt row has none), then the recipe's `eval.metrics` or the defaults for these
    rows, then `provided` (what this task's evaluation adds: judged answers, implicit rewards), then the objective's
    metric if it is not among them."""
    chosen = [resolve_name(name) for name in requested] if requested is not None else default_metrics(kind,
                                                                                                     references)
    chosen += provided
    if objective_metric is not None:
        chosen.append(resolve_name(objective_metric))
    chosen = ([] if kind == "prompt" else ["loss", "perplexity"]) + chosen
    ordered = list(dict.fromkeys(chosen))
    for name in ordered:
        if name not in provided:
            check_fit(name, kind, references)
    return ordered


def primary_metric(names: list[str], objective_metric: str | None) -> str:
    """The one number a run is known by (`tunelab runs`): the objective's metric, else the task's headline."""
    if objective_metric is not None:
        return resolve_name(objective_metric)
    for name in ("preference_accuracy", "feedback_margin", "f1", "json_match", "bleu", "exact_match", "win_rate",
                 "loss"):
        if name in names:
            return name
    return names[0]


def correctness_metric(names: list[str]) -> str:
    """The per-row right/wrong that base-vs-tuned flips are counted by."""
    for name in ("preference_accuracy", "json_match", "accuracy", "normalized_match", "exact_match"):
        if name in names:
            return name
    return "exact_match"


def class_labels(references: list[str]) -> tuple[str, ...]:
    return tuple(sorted({reference.strip() for reference in references}))


def row_statistics(names: list[str], inputs: RowInputs) -> dict[str, Any]:
    """Per-row statistics of each metric; metrics sharing a statistic (label metrics, loss) compute it once."""
    cache: dict[Any, Any] = {}
    stats = {}
    for name in names:
        function = METRICS[name].row_stats
        key = function if function in (label_stats, loss_stats) else name
        if key not in cache:
            cache[key] = function(inputs)
        stats[name] = cache[key]
    return stats


def scores(stats: dict[str, Any]) -> dict[str, float]:
    return {name: METRICS[name].score(values.sum(axis=0)) for name, values in stats.items()}


def label_details(inputs: RowInputs) -> dict[str, Any]:
    """Per-class precision/recall/F1/support and the confusion matrix (scikit-learn), answers outside the classes
    shown as one '(other)' column."""
    predictions = [label_of(prediction, inputs.labels) for prediction in inputs.predictions]
    references = [reference.strip() for reference in inputs.references]
    details = row_metrics.label_metrics(predictions, references, labels=list(inputs.labels))
    columns = list(inputs.labels) + ([OTHER_LABEL] if OTHER_LABEL in predictions else [])
    from sklearn.metrics import confusion_matrix

    details["confusion"] = confusion_matrix(references, predictions, labels=columns).tolist()[: len(inputs.labels)]
    details["confusion_columns"] = columns
    return {"labels": details["labels"], "per_class": details["per_class"], "confusion": details["confusion"],
            "confusion_columns": columns}


def json_field_details(inputs: RowInputs) -> dict[str, float]:
    """Accuracy of each field of the reference objects."""
    right: dict[str, int] = {}
    seen: dict[str, int] = {}
    for prediction, reference in zip(inputs.predictions, inputs.references):
        for key, ok in row_metrics.json_fields_matched(prediction, reference)[2].items():
            seen[key] = seen.get(key, 0) + 1
            right[key] = right.get(key, 0) + int(ok)
    return {key: right[key] / seen[key] for key in seen}
