"""What an evaluation will compute on a test split, decided from the rows and the recipe before any model runs.

`plan_evaluation` refuses what cannot be evaluated (no test rows, rows without reference answers, a metric that
does not fit the rows) with one line, so `tunelab train` can refuse it before training, not after.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.config.schema import EvalSection, ObjectiveSection
from tunelab.data.formats import Example
from tunelab.data.templates import prompt_and_reference
from tunelab.errors import TunelabError
from tunelab.evaluate.registry import class_labels, correctness_metric, plan_metrics, primary_metric


@dataclass(frozen=True)
class EvalPlan:
    kind: str  # chat | label (see Example.kind)
    references: list[str]
    metrics: list[str]
    primary: str  # the run's headline metric
    correctness: str  # the metric whose per-row right/wrong defines flips
    labels: tuple[str, ...]  # class order, for label metrics


def reference_of(example: Example) -> str:
    if example.kind == "label":
        return example.label
    return prompt_and_reference(example.messages)[1]


def plan_evaluation(test: list[Example], section: EvalSection, objective: ObjectiveSection | None,
                    where: str = "test split") -> EvalPlan:
    if not test:
        raise TunelabError(f"{where}: no test rows to evaluate on (give data.test or data.split.test > 0)")
    kinds = sorted({example.kind for example in test})
    if len(kinds) > 1:
        raise TunelabError(f"{where}: test rows mix kinds ({', '.join(kinds)}); evaluation needs one kind")
    kind = kinds[0]
    if kind in ("text", "preference"):
        what = "plain-text rows" if kind == "text" else "preference rows (a chosen and a rejected answer)"
        raise TunelabError(f"{where}: the test split has no reference answers ({what}); evaluation compares "
                           "answers with references: give a test file of prompt/answer rows")
    references = [reference_of(example) for example in test]
    empty = [example for example, reference in zip(test, references) if not reference.strip()]
    if empty:
        scope = "every test row has" if len(empty) == len(test) else f"{len(empty)} test row(s) have"
        raise TunelabError(f"{empty[0].where}: {scope} an empty reference answer; evaluation compares answers "
                           "with references")
    metric = objective.metric if objective else None
    metrics = plan_metrics(section.metrics, metric, kind, references)
    labels = class_labels(references) if any(name in metrics for name in ("accuracy", "precision", "recall", "f1",
                                                                          "mcc")) else ()
    return EvalPlan(kind, references, metrics, primary_metric(metrics, metric), correctness_metric(metrics), labels)
