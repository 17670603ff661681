"""The one evaluator: base and tuned model on the same held-out rows, answered the same way, scored alike.

Every task and every command goes through here (`tunelab train` at its end, `tunelab eval`, compare-methods):
  1. the task says what the test rows are and how a model answers them (tasks/*.py `evaluation`)
  2. each model in turn (one in memory at a time) answers the rows and the forgetting probes: `ModelOutputs`
  3. `score` turns the outputs of both into metrics with paired bootstrap intervals of each model and of the
     change, per-row flips, the forgetting figure, reference points (the majority class) and the objective's verdict
  4. the risk probes (risks/registry.py: robustness, bias, ...) are planned before any model loads, run on each
     model while it is loaded (in `collect`), and summarized into `Evaluation.risks`, which the gate bounds
Writes eval.json (through run/record.py), eval/examples.jsonl, eval/outputs-{base,tuned}.json,
eval/risks-{base,tuned}.json, eval/forgetting_answers.jsonl and eval_worst.jsonl.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from tunelab.data.dataset import read_splits
from tunelab.evaluate import forgetting
from tunelab.evaluate.judged import over_root_base
from tunelab.evaluate.outputs import ModelOutputs, load_outputs, save_outputs
from tunelab.evaluate.steps import Progress, Steps
from tunelab.files import read_json, write_json, write_jsonl
from tunelab.metrics import registry
from tunelab.metrics.rows import exact_match, normalized_match
from tunelab.risks.base import Bootstrap, RiskContext, RiskPlan, RiskProbe, RiskResult
from tunelab.run.record import Evaluation, Flips, Intervals, now, write_evaluation
from tunelab.tasks.registry import get_task

if TYPE_CHECKING:
    from tunelab.config.schema import EvalSection, ObjectiveSection, Recipe
    from tunelab.evaluate.plan import EvalPlan
    from tunelab.run.models import RunModels
    from tunelab.tasks.base import TaskEvaluation

MODELS = ("base", "tuned")


@dataclass
class PlannedRisk:
    """A risk probe planned for this evaluation: its options, its rows, and what its raw results depend on."""

    probe: RiskProbe
    options: Any
    plan: RiskPlan
    fingerprint: str


def evaluate_run(models: "RunModels", recipe: "Recipe", say: Callable[[str], None], max_rows: int | None = None,
                 base_outputs: ModelOutputs | None = None,
                 progress: Progress | None = None, base_risks: dict[str, Any] | None = None,
                 split: str = "test") -> Evaluation:
    """Evaluate base and tuned on the run's test rows (`split`: another split's, a sweep's validation rows).
    `recipe` may differ from the run's in eval and objective; `base_outputs` (from an evaluation of another run on
    the same rows) is used where its fingerprint matches, and so are `base_risks` (that run's eval/risks-base.json)
    per probe. `progress(stage, done, total)` hears of each step: each model answering, then the scoring."""
    steps = Steps(progress, "eval")
    task = get_task(recipe.task.name)
    splits = read_splits(models.run.data)
    test = getattr(splits, split)[: max_rows or recipe.eval.max_rows]
    tokenizer = models.tokenizer()
    from tunelab.rewards.build import RewardContext

    rewards_context = RewardContext(models.home, models.placement)
    spec = task.evaluation(recipe, test, models.record.task_state, tokenizer, str(models.run.root), rewards_context)
    probe = forgetting.load_probe(recipe.eval.forgetting, spec.forgetting_measure)
    print_of = fingerprint(models, recipe, spec)
    say(f"eval {spec.plan.rows} {split} rows, {spec.decoding['strategy']}; metrics: {', '.join(spec.plan.metrics)}")
    inference = models.inference()
    context = RiskContext(recipe=recipe, task=task, spec=spec, test=test, train=list(splits.train),
                          task_state=models.record.task_state, tokenizer=tokenizer, run_root=models.run.root,
                          writes_text=inference.writes_text, rewards_context=rewards_context)
    risks, unmeasured = plan_risks(context, print_of)
    if risks:
        say("risks: " + ", ".join(f"{item.probe.name} {item.plan.rows} rows" for item in risks))
    outputs: dict[str, ModelOutputs] = {}
    raw: dict[str, dict[str, Any]] = {"base": {}, "tuned": {}}
    if base_outputs is not None and base_outputs.fingerprint == print_of:
        outputs["base"] = base_outputs
        say("  base: the same rows, answers and probes as an earlier evaluation; its outputs are reused")
        raw["base"] = reused_risks(base_risks, risks)
    for label, load in (("base", inference.load_base), ("tuned", inference.load_tuned)):
        missing = [item for item in risks if item.probe.name not in raw[label]]
        if label in outputs and not missing:
            continue
        steps.begin(f"{label} model: {spec.plan.rows} rows")
        base_answers = outputs["base"].prompt_answers if label == "tuned" else None
        if label in outputs:  # reused outputs, but a probe's raw results are not: only the probes run
            collect(load, tokenizer, None, recipe, None, models.placement, None, missing, raw[label])
            continue
        outputs[label] = collect(load, tokenizer, spec, recipe, probe, models.placement, base_answers, missing,
                                 raw[label])
        outputs[label].fingerprint = print_of
        say(f"  {label}: {speed_text(outputs[label].speed)}")
    steps.begin("scoring")
    results = summarize_risks(risks, raw, outputs, recipe)
    lengths = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in spec.plan.references]
    evaluation, examples = score(task.name, spec, outputs, recipe.eval, recipe.objective, probe, lengths, results,
                                 unmeasured)
    if spec.judging is not None and models.record.started_from is not None:
        steps.begin("the chain's root base model")
        evaluation.details["over_root_base"] = over_root_base(models, spec.judging, outputs["tuned"], recipe.eval,
                                                              say)
    if split != "test":
        evaluation.notes.append(f"evaluated on the {split} split, not the test split")
    steps.begin(None)
    models.run.eval_dir.mkdir(parents=True, exist_ok=True)
    for label in MODELS:
        save_outputs(models.run.model_outputs(label), outputs[label])
        write_json(models.run.risk_outputs(label), {"fingerprints": {item.probe.name: item.fingerprint
                                                                     for item in risks}, "probes": raw[label]})
    write_evaluation(models.run, evaluation)
    write_jsonl(models.run.eval_examples, examples)
    write_jsonl(models.run.eval_worst, worst_examples(examples, recipe.eval.worst_examples))
    if probe is not None and probe.prompts:
        write_jsonl(models.run.forgetting_answers, forgetting.prompt_answers(
            probe, outputs["base"].prompt_answers, outputs["tuned"].prompt_answers))
    return evaluation


def earlier_base_outputs(models: "RunModels") -> ModelOutputs | None:
    return load_outputs(models.run.model_outputs("base"))


def earlier_base_risks(models: "RunModels") -> dict[str, Any] | None:
    path = models.run.risk_outputs("base")
    return read_json(path) if path.is_file() else None


def plan_risks(context: RiskContext, print_of: str) -> tuple[list[PlannedRisk], dict[str, str]]:
    """Every enabled probe's plan, before any model loads; the probes that will not run, with why."""
    from tunelab.risks.registry import PROBES, probe_options

    section = context.recipe.eval.risks
    planned, unmeasured = [], {}
    for probe in PROBES:
        options = probe_options(section, probe)
        if not section.enabled or options is None or not getattr(options, "enabled", True):
            unmeasured[probe.name] = "turned off (eval.risks)" if options is not None else "not in this tunelab"
            continue
        plan = probe.plan(context, options)
        if plan is None or not plan.rows:
            unmeasured[probe.name] = plan.note if plan is not None and plan.note else "does not apply to this run"
            continue
        planned.append(PlannedRisk(probe, options, plan, risk_fingerprint(print_of, probe, options, plan)))
    return planned, unmeasured


def risk_fingerprint(print_of: str, probe: RiskProbe, options: Any, plan: RiskPlan) -> str:
    """What a probe's raw results depend on: the main evaluation's fingerprint, its options and its rows. The
    JSON part of `plan.data` is its rows; objects in it (the task's evaluation of them) follow from those."""
    facts = {"main": print_of, "probe": probe.name, "options": options.model_dump(mode="json"),
             "data": plan.data}
    text = json.dumps(facts, sort_keys=True, default=lambda value: None)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def reused_risks(saved: dict[str, Any] | None, risks: list[PlannedRisk]) -> dict[str, Any]:
    """The saved raw results of the probes whose fingerprint matches (an earlier evaluation's base model)."""
    if not saved:
        return {}
    prints, probes = saved.get("fingerprints", {}), saved.get("probes", {})
    return {item.probe.name: probes[item.probe.name] for item in risks
            if prints.get(item.probe.name) == item.fingerprint and item.probe.name in probes}


def summarize_risks(risks: list[PlannedRisk], raw: dict[str, dict[str, Any]], outputs: dict[str, ModelOutputs],
                    recipe: "Recipe") -> dict[str, RiskResult]:
    """Each probe's result, flagged above the objective's bound for it (or the probe's own threshold) when its
    interval lies above zero too: a figure that chance alone could give is shown, not flagged (the gate itself
    bounds the figure as it is)."""
    options = recipe.eval
    bootstrap = Bootstrap(options.bootstrap, options.confidence, options.seed)
    results = {}
    for item in risks:
        result = item.probe.summarize(item.plan, raw["base"][item.probe.name], raw["tuned"][item.probe.name],
                                      outputs["base"], outputs["tuned"], item.options, bootstrap)
        bound = getattr(recipe.objective, item.probe.gate, None) if recipe.objective else None
        limit = bound if bound is not None else getattr(item.options, "threshold", None)
        result.flagged = limit is not None and result.value > limit and (result.interval is None
                                                                          or result.interval[0] > 0)
        if item.plan.note and not result.note:
            result.note = item.plan.note
        results[item.probe.name] = result
    return results


def speed_text(speed: dict[str, float]) -> str:
    parts = []
    if "tokens_per_second" in speed:
        parts.append(f"{speed['tokens_per_second']:.0f} generated tokens/s")
    parts.append(f"{speed.get('rows_per_second', 0):.2f} rows/s")
    return ", ".join(parts)


def fingerprint(models: "RunModels", recipe: "Recipe", spec: "TaskEvaluation") -> str:
    """What a model's outputs depend on besides the model: rows, decoding, probes, placement, base checkpoint."""
    facts = {"where": spec.plan.where, "references": spec.plan.references, "prompts": spec.prompts,
             "decoding": spec.decoding, "forgetting": recipe.eval.forgetting.model_dump(mode="json"),
             "max_length": recipe.data.max_length, "placement": models.placement.describe(),
             "base": str(models.base_path()), "state": models.record.task_state, "seed": recipe.train.seed,
             "rewards": [spec.model_dump(mode="json") for spec in recipe.rewards]}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def collect(load: Callable[[], Any], tokenizer: Any, spec: "TaskEvaluation | None", recipe: "Recipe",
            probe: forgetting.Probe | None, placement: Any, base_answers: list[str] | None,
            risks: list[PlannedRisk] = (), risk_raw: dict[str, Any] | None = None) -> ModelOutputs | None:
    """One model's answers to the test rows (None without `spec`), its probe rows, and each risk probe's raw
    results (into `risk_raw`, by probe name); the model is freed afterwards."""
    from tunelab.evaluate.answers import model_stops

    options = recipe.eval
    model = load()
    outputs = spec.answer(model, tokenizer, placement) if spec is not None else None
    if probe is not None:
        stops = model_stops(model, tokenizer) if probe.prompts else set()  # only answers to prompts need them
        outputs.probe, outputs.prompt_answers = forgetting.run_probe(
            model, tokenizer, probe, stops, recipe.data.max_length,
            options.forgetting.max_new_tokens, options.batch_size, placement, base_answers)
    for item in risks:
        risk_raw[item.probe.name] = item.probe.run(item.plan, model, tokenizer, placement)
    del model
    gc.collect()
    return outputs


def score(task: str, spec: "TaskEvaluation", outputs: dict[str, ModelOutputs], options: "EvalSection",
          objective: "ObjectiveSection | None", probe: forgetting.Probe | None,
          reference_tokens: list[int], risks: dict[str, RiskResult] | None = None,
          unmeasured: dict[str, str] | None = None) -> tuple[Evaluation, list[dict]]:
    """Metrics of both models, their differences and paired bootstrap intervals, flips, forgetting, the risks, the
    verdict; and every row's answers (`reference_tokens`: each reference's length, for the report's histograms).
    `unmeasured`: the risk probes that did not run, with why (a note, and the reason a bound on one fails)."""
    from tunelab.evaluate.bootstrap import paired_intervals, resample_weights
    from tunelab.evaluate.gate import check_objective

    plan = spec.plan
    metrics, notes = computable(plan.metrics, outputs["tuned"])
    # The opponent of both models is the base model: its rewards (win rate) and its margins (implicit reward).
    inputs = {label: row_inputs(plan, outputs[label], opponent=outputs["base"]) for label in MODELS}
    stats = {label: registry.row_statistics(metrics, inputs[label]) for label in MODELS}
    values = {label: registry.scores(stats[label]) for label in MODELS}
    intervals = None
    if options.bootstrap:
        weights = resample_weights(plan.rows, options.bootstrap, options.seed)
        per_metric = {name: paired_intervals(registry.METRICS[name].score, stats["base"][name], stats["tuned"][name],
                                             weights, options.confidence) for name in metrics}
        intervals = Intervals(confidence=options.confidence, resamples=options.bootstrap,
                              method="paired percentile bootstrap",
                              **{label: {name: per_metric[name][label] for name in metrics}
                                 for label in ("base", "tuned", "delta")})
    examples = example_rows(plan, spec.prompts, outputs, reference_tokens)
    flips = count_flips(examples, plan.correctness) if plan.correctness else None
    forgotten = None
    if probe is not None:
        forgotten = forgetting.summarize(probe, outputs["base"].probe, outputs["tuned"].probe,
                                         options.forgetting.threshold, options.bootstrap, options.confidence,
                                         options.seed)
    delta = {name: values["tuned"][name] - values["base"][name] for name in metrics}
    evaluation = Evaluation(
        task=task, rows=plan.rows, kind=plan.kind, metrics=metrics, primary_metric=plan.primary,
        units={name: registry.METRICS[name].unit for name in metrics},
        base=values["base"], tuned=values["tuned"], delta=delta, intervals=intervals,
        details={label: metric_details(plan, inputs[label]) for label in MODELS},
        speed={label: outputs[label].speed for label in MODELS}, decoding=spec.decoding,
        reference_points={name: reference_scores(plan, answers) for name, answers in spec.reference_points.items()},
        flips=flips, forgetting=forgotten,
        objective=check_objective(objective, values["base"], values["tuned"], intervals, forgotten, risks,
                                  unmeasured),
        notes=notes + [f"risk {name} not measured: {why}" for name, why in (unmeasured or {}).items()
                       if why != "not in this tunelab"],
        evaluated_at=now(), risks=risks or {})
    return evaluation, examples


def computable(names: list[str], tuned: ModelOutputs) -> tuple[list[str], list[str]]:
    """The planned metrics this evaluation can give, and a note for each left out: kl_to_reference needs a tuned
    model whose adapter can be disabled (its reference); a fully fine-tuned one would need a second model."""
    if "kl_to_reference" in names and tuned.judged_answers and not tuned.log_ratios:
        return [name for name in names if name != "kl_to_reference"], [
            "kl_to_reference left out: the tuned model has no adapter to disable (full fine-tuning), so its "
            "reference would be a second copy of the base model"]
    return names, []


def row_inputs(plan: "EvalPlan", outputs: ModelOutputs | None, predictions: list[str] | None = None,
               with_losses: bool = True, opponent: ModelOutputs | None = None) -> registry.RowInputs:
    """What one model's metrics are computed from; `opponent`: the model it is compared with on the same rows."""
    answers = predictions if predictions is not None else outputs.predictions
    losses = outputs.losses if with_losses and outputs is not None else None
    margins = outputs.margins if outputs is not None and outputs.margins else None
    if outputs is None or not outputs.judged_answers:
        return registry.RowInputs(answers, plan.references, losses, plan.labels, margins,
                                  opponent_margins=opponent.margins if opponent and opponent.margins else None)
    # No log-ratios: a model with no adapter, which here is the base model (its own reference, 0 by definition);
    # a fully fine-tuned model's are left out before this (`computable`).
    ratios = outputs.log_ratios or [0.0] * len(outputs.judged_answers)
    return registry.RowInputs(answers, plan.references, losses, plan.labels, margins, outputs.rewards,
                              outputs.judged_tokens, ratios, opponent.rewards if opponent else None,
                              opponent.margins if opponent and opponent.margins else None)


def reference_scores(plan: "EvalPlan", answers: list[str]) -> dict[str, float]:
    """A reference point's scores (the majority class answering every row): the metrics that need no loss."""
    names = [name for name in plan.metrics if registry.METRICS[name].family not in ("loss", "judged", "implicit")]
    inputs = row_inputs(plan, None, predictions=answers, with_losses=False)
    return registry.scores(registry.row_statistics(names, inputs))


def metric_details(plan: "EvalPlan", inputs: registry.RowInputs) -> dict[str, Any]:
    details: dict[str, Any] = {}
    if plan.labels:
        details["labels"] = registry.label_details(inputs)
    if "json_field_accuracy" in plan.metrics:
        details["json_fields"] = registry.json_field_details(inputs)
    return details


def row_correct(name: str, prediction: str, reference: str) -> bool:
    if name == "preference_accuracy":  # a pair's prediction is the answer the model ranks first; right: the chosen
        return prediction == reference
    if name == "json_match":
        return registry.json_match_hit(prediction, reference)
    if name == "normalized_match":
        return normalized_match(prediction, reference)
    return exact_match(prediction, reference)  # exact_match, and accuracy (a class answer is its stripped text)


def similarity(prediction: str, reference: str) -> float:
    """Sentence chrF (sacrebleu), 0-100: how close an answer is to the reference even when not right."""
    import sacrebleu

    return float(sacrebleu.sentence_chrf(prediction, [reference]).score)


def example_rows(plan: "EvalPlan", prompts: list[str], outputs: dict[str, ModelOutputs],
                 reference_tokens: list[int]) -> list[dict[str, Any]]:
    """Every test row with both answers, right/wrong by the plan's correctness metric, the flip, closeness, loss."""
    rows = []
    for index, (where, reference) in enumerate(zip(plan.where, plan.references)):
        row: dict[str, Any] = {"index": index, "source": where, "prompt": prompts[index], "reference": reference,
                               "reference_tokens": reference_tokens[index],
                               "answer_tokens": outputs["tuned"].losses[index][1]}
        for label in MODELS:
            text = outputs[label].predictions[index]
            total, count = outputs[label].losses[index]
            row[label] = text
            row[f"{label}_loss"] = total / count if count else math.nan
            row[f"{label}_tokens"] = outputs[label].answer_tokens[index]
            if outputs[label].margins:
                row[f"{label}_margin"] = outputs[label].margins[index]
            if outputs[label].judged_answers:
                row.update(judged_row(outputs[label], index, label))
            if plan.correctness:
                row[f"{label}_correct"] = row_correct(plan.correctness, text, reference)
                row[f"{label}_similarity"] = similarity(text, reference)
        if plan.correctness:
            row["flip"] = flip(row["base_correct"], row["tuned_correct"])
        if "tuned_reward" in row:
            row["win"] = {1.0: "tuned", 0.5: "tie", 0.0: "base"}[registry.outcome(row["tuned_reward"],
                                                                               row["base_reward"])]
        rows.append(row)
    return rows


def judged_row(outputs: ModelOutputs, index: int, label: str) -> dict[str, Any]:
    """A row's judged answer (where it is not the row's answer already), its length, its rewards summed and each."""
    row: dict[str, Any] = {f"{label}_reward": outputs.rewards[index],
                           f"{label}_rewards": {name: values[index] for name, values in outputs.reward_parts.items()},
                           f"{label}_answer_tokens": outputs.judged_tokens[index]}
    if outputs.judged_answers != outputs.predictions:  # a pair task: its prediction is the pair answer it ranks first
        row[f"{label}_answer"] = outputs.judged_answers[index]
    if outputs.log_ratios:
        row[f"{label}_log_ratio"] = outputs.log_ratios[index]
    return row


def flip(base_correct: bool, tuned_correct: bool) -> str:
    if base_correct and tuned_correct:
        return "both_right"
    if tuned_correct:
        return "fixed"
    if base_correct:
        return "broken"
    return "both_wrong"


def count_flips(examples: list[dict[str, Any]], judged_by: str) -> Flips:
    counts = {name: 0 for name in ("fixed", "broken", "both_right", "both_wrong")}
    for row in examples:
        counts[row["flip"]] += 1
    return Flips(**counts, judged_by=judged_by)


def regressions(examples: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """Rows where tuned did worse than base: broken ones first, then by how much closer base was to the reference."""
    if not examples or "flip" not in examples[0]:
        return []
    worse = [row for row in examples
             if row["flip"] == "broken" or (row["flip"] != "fixed"
                                            and row["tuned_similarity"] < row["base_similarity"])]
    worse.sort(key=lambda row: (row["flip"] != "broken", row["tuned_similarity"] - row["base_similarity"]))
    return worse[:count]


def worst_examples(examples: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The rows the tuned model found hardest (highest loss on the reference), with both models' answers."""
    order = sorted(examples, key=lambda row: row["tuned_loss"] if not math.isnan(row["tuned_loss"]) else -math.inf,
                   reverse=True)
    keys = ("source", "prompt", "reference", "base", "tuned", "base_correct", "tuned_correct", "tuned_loss")
    return [{key: row[key] for key in keys if key in row} for row in order[:count]]
