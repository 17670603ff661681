"""What an evaluation will compute on a test split, decided from the rows and the recipe before any model runs.

A task says what its test rows are (`kind`: chat answers, class labels, preference pairs, or plain text) and what
each row's reference is (a pair's: its chosen answer); `plan_evaluation` picks the metrics and refuses what cannot
be evaluated (no test rows, empty references, a metric that does not fit the rows, an objective on a metric that is
not computed) with one line, so `tunelab train` refuses it before training, not after.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunelab.errors import TunelabError
from tunelab.metrics.registry import class_labels, correctness_metric, plan_metrics, primary_metric

if TYPE_CHECKING:
    from tunelab.config.schema import EvalSection, ObjectiveSection

LABEL_METRICS = ("accuracy", "precision", "recall", "f1", "mcc")


@dataclass(frozen=True)
class EvalPlan:
    # chat (answers to compare), label (classes), preference (pairs: margins), feedback (completions judged
    # desirable or not: signed log-probabilities), text (loss only) or prompt (answers judged by the recipe's rewards
    # only)
    kind: str
    references: list[str]  # per row (a pair's: its chosen answer); empty strings for text and prompt rows
    metrics: list[str]
    primary: str  # the run's headline metric
    correctness: str | None  # the metric whose per-row right/wrong defines flips; None: no per-row verdict
    labels: tuple[str, ...]  # class order, for label metrics
    where: list[str]  # each row's file:line

    @property
    def rows(self) -> int:
        return len(self.where)


def plan_evaluation(kind: str, references: list[str], where: list[str], section: "EvalSection",
                    objective: "ObjectiveSection | None", labels: tuple[str, ...] = (),
                    source: str = "test split", provided: tuple[str, ...] = ()) -> EvalPlan:
    """`provided`: metrics the task's evaluation adds besides the rows' own (judged answers, implicit rewards)."""
    if not where:
        raise TunelabError(f"{source}: no test rows to evaluate on (give data.test or data.split.test > 0)")
    if kind not in ("text", "prompt"):
        empty = [place for place, reference in zip(where, references) if not reference.strip()]
        if empty:
            scope = "every test row has" if len(empty) == len(where) else f"{len(empty)} test row(s) have"
            raise TunelabError(f"{empty[0]}: {scope} an empty reference answer; evaluation compares answers "
                               "with references")
    metric = objective.metric if objective else None
    metrics = plan_metrics(section.metrics, metric, kind, references, provided)
    if not labels and any(name in metrics for name in LABEL_METRICS):
        labels = class_labels(references)
    # Plain text, feedback and prompt rows have no per-row right or wrong (a feedback row's signed log-probability
    # has no threshold that would make one; a prompt's answer is judged against the base model's: win_rate), so no
    # flips are counted for them.
    correctness = correctness_metric(metrics) if kind not in ("text", "feedback", "prompt") else None
    return EvalPlan(kind, references, metrics, primary_metric(metrics, metric), correctness, labels, where)
