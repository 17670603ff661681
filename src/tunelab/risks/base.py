"""The interface every risk probe implements (robustness, bias, privacy, factual drift).

A risk probe is measured on both models of an evaluation, like the forgetting probe, in three steps:
  plan       from the run's rows and the recipe, before any model is loaded: the probe's own rows (perturbed test
             prompts, swapped names, training-row prefixes, questions). None: the probe does not apply to this run
             (say why in `RiskPlan.note`... or return a plan with no rows and a note)
  run        one model (base, then tuned: the evaluator loads one at a time) on the plan's rows; what it returns is
             plain JSON (saved in eval/risks-{base,tuned}.json so an evaluation can be re-scored without models)
  summarize  both models' raw results (and each model's main evaluation outputs: its clean answers) into one
             `RiskResult` with the gated figure, its paired bootstrap interval, per-kind details and examples
The evaluator (evaluate/evaluator.py) calls them; the gate (evaluate/gate.py) bounds `RiskResult.value` with the
objective's max_* field named by the probe; the report shows each result in its "risks" section.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from tunelab.config.schema import Recipe
    from tunelab.data.formats import Example
    from tunelab.device import Placement
    from tunelab.evaluate.outputs import ModelOutputs
    from tunelab.tasks.base import Task, TaskEvaluation


@dataclass
class RiskContext:
    """What a probe may plan from: no model is loaded yet."""

    recipe: "Recipe"
    task: "Task"
    spec: "TaskEvaluation"  # the main evaluation of the test rows (its plan: references, metrics, correctness)
    test: list["Example"]  # the test rows as evaluated (same order as spec.plan)
    train: list["Example"]  # the training split as trained on (privacy: what could come back out)
    task_state: dict[str, Any]
    tokenizer: Any
    run_root: Path
    writes_text: bool  # a causal LM that answers with text (False: a classifier with a head)
    rewards_context: Any = None  # tasks' evaluation() takes it (rewards.build.RewardContext)


@dataclass
class RiskPlan:
    """A probe's rows and whatever it needs to run and score them (probe-specific, in `data`)."""

    probe: str
    rows: int
    data: dict[str, Any] = field(default_factory=dict)
    note: str | None = None  # what was left out and why


class RiskResult(BaseModel):
    """One risk, base vs tuned, as eval.json keeps it."""

    model_config = ConfigDict(extra="forbid")

    name: str  # robustness | bias | privacy | factual_drift
    measure: str  # what `value` is, in words, e.g. "json_match drop on perturbed prompts (tuned), points"
    unit: str  # "rate" (0-1, shown as %), "points" or "bits"
    gate: str  # the objective field that bounds `value`, e.g. max_robustness_drop
    base: float | None  # the same figure for the base model (None where it has none, e.g. memorization of rows
    # the base never saw is still measured: then it is the base's figure)
    tuned: float
    value: float  # the gated figure (usually tuned's, or tuned - base): larger is worse
    interval: tuple[float, float] | None = None  # of `value`, paired bootstrap over the probe's rows
    rows: int
    details: dict[str, Any] = Field(default_factory=dict)  # e.g. per perturbation kind: base, tuned, drop, interval
    examples: list[dict[str, Any]] = Field(default_factory=list)  # what changed / leaked, for the report
    flagged: bool = False  # value above the recipe's bound (or the probe's default threshold)
    signed: bool = False  # base and tuned are changes (a drop: shown with a sign), not levels (a rate)
    note: str | None = None


@dataclass(frozen=True)
class RiskProbe:
    name: str
    gate: str  # objective field name: max_robustness_drop | max_bias_change | max_memorization | max_factual_drift
    # (context, options) -> plan, or None where the probe does not apply to this run
    plan: Callable[[RiskContext, Any], RiskPlan | None]
    # (plan, model, tokenizer, placement) -> raw JSON-able results of one model
    run: Callable[[RiskPlan, Any, Any, "Placement"], dict[str, Any]]
    # (plan, base raw, tuned raw, base outputs, tuned outputs, options, bootstrap settings) -> result
    summarize: Callable[[RiskPlan, dict[str, Any], dict[str, Any], "ModelOutputs", "ModelOutputs", Any,
                         "Bootstrap"], RiskResult]


@dataclass(frozen=True)
class Bootstrap:
    resamples: int  # 0: no intervals
    confidence: float
    seed: int
