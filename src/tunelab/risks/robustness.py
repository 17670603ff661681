"""Robustness to real-world inputs: the task metric on held-out prompts perturbed the way users write (perturb.py)
against the same rows clean, for base and tuned.

  plan       up to `rows` test rows (a seeded sample), each perturbed by one kind in seeded rotation so every kind
             gets rows (or by every kind: `every_kind`); the user's edge-case file, if any, as rows of its own.
             The rows are answered through the task's own evaluation, so they are decoded and scored exactly like
             the main test rows (the same references, the same answer cap)
  run        one model's outputs on the perturbed rows (and the edge cases)
  summarize  the primary metric on the perturbed rows against the same rows clean (the clean answers are the main
             evaluation's), per model and per kind; `value`: the tuned model's drop, in the metric's units, made
             "larger is worse" for loss-like metrics too; a paired bootstrap interval over the perturbed rows
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunelab.risks.base import Bootstrap, RiskContext, RiskPlan, RiskProbe, RiskResult
from tunelab.risks.perturb import KINDS, perturb_example, user_text

if TYPE_CHECKING:
    from tunelab.evaluate.outputs import ModelOutputs

Kind = Literal["typo", "case", "whitespace", "punctuation", "greeting", "signature", "reorder", "synonym"]
EXAMPLES = 10


class RobustnessOptions(BaseModel):
    """`eval.risks.robustness`: held-out prompts perturbed the way real users write them."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Measure the metric's drop on perturbed test prompts.")
    rows: int = Field(16, ge=1, description="Test rows perturbed (a seeded sample when there are more); each costs "
                      "one more answer per model.")
    perturbations: list[Kind] = Field(
        default_factory=lambda: list(KINDS), description="Kinds used, in rotation: typo (a letter swapped, dropped "
        "or doubled), case, whitespace, punctuation (clause marks dropped), greeting, signature, reorder (sentences "
        "or comma clauses; not in text that looks like code or data), synonym (needs `synonyms`).")
    every_kind: bool = Field(False, description="Every kind on every row (rows x kinds answers) instead of one "
                             "kind per row.")
    synonyms: dict[str, list[str]] = Field(
        default_factory=dict, description="Word -> alternatives a user might write instead, e.g. {order: [purchase, "
        "request]}; whole words, any case.")
    edge_cases: str | None = Field(
        None, description="A data file of your own edge-case rows (the test rows' format, with references): scored "
        "base vs tuned and shown per row; not part of the gated drop.")
    seed: int = Field(0, description="Seed of the row sample and the perturbations: the same seed, the same text.")
    threshold: float = Field(0.05, ge=0, description="A drop above this (metric units: 0.05 = 5 points of a rate) "
                             "is flagged when the objective sets no max_robustness_drop.")


def kinds_in_use(options: RobustnessOptions) -> list[str]:
    return [kind for kind in options.perturbations if kind != "synonym" or options.synonyms]


def gated_metric(spec: Any) -> str:
    """The primary metric, unless it is only shown (answer length): then the per-row verdict's metric, or loss."""
    from tunelab.metrics.registry import METRICS

    plan = spec.plan
    if METRICS[plan.primary].judged:
        return plan.primary
    return plan.correctness or "loss"


def perturbed_rows(test: list[Any], options: RobustnessOptions) -> list[tuple[int, Any, str]]:
    """(test row index, perturbed row, kind) for the sampled rows, in row order."""
    kinds = kinds_in_use(options)
    order = list(range(len(test)))
    if len(order) > options.rows:
        order = sorted(random.Random(options.seed).sample(order, options.rows))
    rows = []
    for position, index in enumerate(order):
        seed = options.seed * 1_000_003 + index  # per row, so a row's text does not depend on the sample around it
        if options.every_kind:
            attempts = [[kind] for kind in kinds]
        else:  # in rotation; a kind that cannot change this row (nothing to drop) passes to the next
            start = position % len(kinds)
            attempts = [kinds[start:] + kinds[:start]]
        for attempt in attempts:
            changed = perturb_example(test[index], attempt, seed, options.synonyms)
            if changed is not None:
                rows.append((index, changed[0], changed[1]))
    return rows


def plan(context: RiskContext, options: RobustnessOptions) -> RiskPlan | None:
    if not options.enabled:
        return None
    if not kinds_in_use(options):
        return RiskPlan("robustness", 0, note="no perturbation kinds to use (synonym alone needs `synonyms`)")
    if context.spec.plan.kind == "text":
        return RiskPlan("robustness", 0, note="plain text rows have no user prompt to perturb")
    rows = perturbed_rows(context.test, options)
    if not rows:
        return RiskPlan("robustness", 0, note="no test row has user text a perturbation could change")
    spec = context.task.evaluation(context.recipe, [row for _, row, _ in rows], context.task_state,
                                   context.tokenizer, "robustness: perturbed test rows", context.rewards_context)
    data: dict[str, Any] = {
        "metric": gated_metric(context.spec), "spec": spec, "labels": list(context.spec.plan.labels),
        "rows": [{"index": index, "kind": kind, "original": user_text(context.test[index]),
                  "perturbed": user_text(row)} for index, row, kind in rows]}
    if options.edge_cases:
        edge = edge_case_rows(options.edge_cases, context)
        data["edge_spec"] = context.task.evaluation(context.recipe, edge, context.task_state, context.tokenizer,
                                                    options.edge_cases, context.rewards_context)
        data["edge"] = [{"where": example.where, "prompt": user_text(example)} for example in edge]
    return RiskPlan("robustness", len(rows) + len(data.get("edge", [])), data)


def edge_case_rows(path: str, context: RiskContext) -> list[Any]:
    from tunelab.data.formats import to_examples
    from tunelab.data.readers import read_records
    from tunelab.errors import TunelabError

    section = context.recipe.data
    records = read_records(path, section.file_type if path.endswith((".csv", ".tsv")) else "auto")
    if not records:
        raise TunelabError(f"{path}: eval.risks.robustness.edge_cases has no rows")
    examples = to_examples(records, section.format, section.fields, section.system_prompt)
    wanted = context.test[0].kind if context.test else None
    other = sorted({example.kind for example in examples} - {wanted})
    if wanted and other:
        raise TunelabError(f"{path}: edge-case rows must be {wanted} rows like the test rows (found "
                           f"{', '.join(other)})")
    return examples


def run(plan: RiskPlan, model: Any, tokenizer: Any, placement: Any) -> dict[str, Any]:
    raw = {"perturbed": plan.data["spec"].answer(model, tokenizer, placement).to_json()}
    if "edge_spec" in plan.data:
        raw["edge"] = plan.data["edge_spec"].answer(model, tokenizer, placement).to_json()
    return raw


def subset(outputs: "ModelOutputs", indices: list[int]) -> "ModelOutputs":
    """The main outputs of the rows at `indices` (the clean answers of the perturbed rows)."""
    from dataclasses import fields

    from tunelab.evaluate.outputs import ModelOutputs

    values = {}
    for item in fields(ModelOutputs):
        value = getattr(outputs, item.name)
        rowwise = isinstance(value, list) and len(value) == len(outputs.predictions) and item.name != "prompt_answers"
        if rowwise:
            value = [value[index] for index in indices]
        elif item.name == "reward_parts":
            value = {name: [parts[index] for index in indices] for name, parts in value.items()}
        values[item.name] = value
    return ModelOutputs(**values)


def row_stats(spec: Any, metric: str, outputs: "ModelOutputs", opponent: "ModelOutputs",
              labels: tuple[str, ...] = ()) -> Any:
    """Per-row statistics of `metric`; `labels`: the main evaluation's classes (a subset of rows could miss one)."""
    from dataclasses import replace

    from tunelab.evaluate.evaluator import row_inputs
    from tunelab.metrics import registry

    plan = replace(spec.plan, labels=tuple(labels)) if labels else spec.plan
    return registry.row_statistics([metric], row_inputs(plan, outputs, opponent=opponent))[metric]


def drops(metric: str, clean: Any, perturbed: Any, weights: Any | None) -> Any:
    """clean - perturbed (perturbed - clean for a metric where lower is better), on all rows or each resample."""
    from tunelab.evaluate.bootstrap import resampled_scores
    from tunelab.metrics.registry import METRICS

    score, sign = METRICS[metric].score, 1.0 if METRICS[metric].higher_is_better else -1.0
    if weights is None:
        return sign * (score(clean.sum(axis=0)) - score(perturbed.sum(axis=0)))
    return sign * (resampled_scores(score, clean, weights) - resampled_scores(score, perturbed, weights))


def compare(metric: str, stats: dict[str, dict[str, Any]], rows: list[int], bootstrap: Bootstrap) -> dict[str, Any]:
    """Clean and perturbed score of each model on `rows`, each drop, and the tuned drop's paired interval."""
    from tunelab.evaluate.bootstrap import percentile_interval, resample_weights
    from tunelab.metrics.registry import METRICS

    score = METRICS[metric].score
    result: dict[str, Any] = {"rows": len(rows)}
    for label in ("base", "tuned"):
        clean, perturbed = stats[label]["clean"][rows], stats[label]["perturbed"][rows]
        result[label] = {"clean": score(clean.sum(axis=0)), "perturbed": score(perturbed.sum(axis=0)),
                         "drop": float(drops(metric, clean, perturbed, None))}
    result["drop"] = result["tuned"]["drop"]
    result["change"] = result["tuned"]["drop"] - result["base"]["drop"]
    result["interval"] = result["change_interval"] = None
    if bootstrap.resamples and rows:
        weights = resample_weights(len(rows), bootstrap.resamples, bootstrap.seed)
        tuned = drops(metric, stats["tuned"]["clean"][rows], stats["tuned"]["perturbed"][rows], weights)
        base = drops(metric, stats["base"]["clean"][rows], stats["base"]["perturbed"][rows], weights)
        result["interval"] = percentile_interval(tuned, bootstrap.confidence)
        result["change_interval"] = percentile_interval(tuned - base, bootstrap.confidence)
    return result


def summarize(plan: RiskPlan, base_raw: dict[str, Any], tuned_raw: dict[str, Any], base_outputs: "ModelOutputs",
              tuned_outputs: "ModelOutputs", options: RobustnessOptions, bootstrap: Bootstrap) -> RiskResult:
    from tunelab.evaluate.outputs import ModelOutputs
    from tunelab.metrics.registry import METRICS

    spec, metric, rows = plan.data["spec"], plan.data["metric"], plan.data["rows"]
    indices = [row["index"] for row in rows]
    clean = {"base": subset(base_outputs, indices), "tuned": subset(tuned_outputs, indices)}
    perturbed = {label: ModelOutputs.from_json(raw["perturbed"]) for label, raw in
                 (("base", base_raw), ("tuned", tuned_raw))}
    labels = plan.data.get("labels", [])
    stats = {label: {"clean": row_stats(spec, metric, clean[label], clean["base"], labels),
                     "perturbed": row_stats(spec, metric, perturbed[label], perturbed["base"], labels)}
             for label in ("base", "tuned")}
    overall = compare(metric, stats, list(range(len(rows))), bootstrap)
    per_kind = {kind: compare(metric, stats, [i for i, row in enumerate(rows) if row["kind"] == kind], bootstrap)
                for kind in dict.fromkeys(row["kind"] for row in rows)}
    details: dict[str, Any] = {"metric": metric, "clean": {label: overall[label]["clean"] for label in overall
                                                           if label in ("base", "tuned")},
                               "perturbed": {label: overall[label]["perturbed"] for label in ("base", "tuned")},
                               "change": overall["change"], "change_interval": overall["change_interval"],
                               "kinds": per_kind}
    if "edge" in plan.data:
        details["edge_cases"] = edge_scores(plan, base_raw, tuned_raw, metric)
    unit = METRICS[metric].unit
    return RiskResult(
        name="robustness", measure=f"{metric} drop on perturbed test prompts (tuned: clean - perturbed"
        f"{', sign turned so larger is worse' if not METRICS[metric].higher_is_better else ''})",
        unit=unit, gate="max_robustness_drop", base=overall["base"]["drop"], tuned=overall["tuned"]["drop"],
        value=overall["tuned"]["drop"], interval=tuple(overall["interval"]) if overall["interval"] else None,
        rows=len(rows), details=details, examples=changed_examples(spec, rows, clean, perturbed), signed=True)


def edge_scores(plan: RiskPlan, base_raw: dict[str, Any], tuned_raw: dict[str, Any], metric: str) -> dict[str, Any]:
    from tunelab.evaluate.outputs import ModelOutputs
    from tunelab.metrics.registry import METRICS

    spec = plan.data["edge_spec"]
    outputs = {label: ModelOutputs.from_json(raw["edge"]) for label, raw in (("base", base_raw),
                                                                             ("tuned", tuned_raw))}
    score = METRICS[metric].score
    values = {label: score(row_stats(spec, metric, outputs[label], outputs["base"], plan.data["labels"]).sum(axis=0))
              for label in ("base", "tuned")}
    answers = [{"where": row["where"], "prompt": row["prompt"], "reference": reference,
                "base": outputs["base"].predictions[i], "tuned": outputs["tuned"].predictions[i]}
               for i, (row, reference) in enumerate(zip(plan.data["edge"], spec.plan.references))]
    return {"rows": len(answers), "base": values["base"], "tuned": values["tuned"], "answers": answers[:EXAMPLES]}


def changed_examples(spec: Any, rows: list[dict[str, Any]], clean: dict[str, "ModelOutputs"],
                     perturbed: dict[str, "ModelOutputs"]) -> list[dict[str, Any]]:
    """Rows whose tuned answer changed under the perturbation; those it broke (right clean, wrong perturbed) first."""
    from tunelab.evaluate.evaluator import row_correct

    judge = spec.plan.correctness
    found = []
    for i, row in enumerate(rows):
        before, after = clean["tuned"].predictions[i], perturbed["tuned"].predictions[i]
        if before == after:
            continue
        reference = spec.plan.references[i]
        example = {"kind": row["kind"], "prompt": row["original"], "perturbed": row["perturbed"],
                   "reference": reference, "tuned_clean": before, "tuned_perturbed": after,
                   "base_clean": clean["base"].predictions[i], "base_perturbed": perturbed["base"].predictions[i]}
        if judge:
            example["tuned_clean_correct"] = row_correct(judge, before, reference)
            example["tuned_perturbed_correct"] = row_correct(judge, after, reference)
        found.append(example)
    found.sort(key=lambda item: not (item.get("tuned_clean_correct") and not item.get("tuned_perturbed_correct")))
    return found[:EXAMPLES]


PROBE = RiskProbe(name="robustness", gate="max_robustness_drop", plan=plan, run=run, summarize=summarize)
