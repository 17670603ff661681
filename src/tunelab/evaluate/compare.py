"""`tunelab eval`: base and tuned model on the same held-out rows with the same decoding, side by side.

For each model in turn (one in memory at a time): teacher-forced loss on the reference answers, batched greedy
generation, the forgetting probe. Then the metrics of both on the same rows, paired bootstrap intervals of each and
of the difference, per-row flips, and the objective's verdict. Writes eval.json, eval/examples.jsonl,
eval/forgetting_answers.jsonl and eval_worst.jsonl.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

from tunelab.config.schema import Recipe
from tunelab.data.prepare import read_splits
from tunelab.data.templates import Encoded, encode_conversation, encode_prompt, prompt_and_reference, stop_token_ids
from tunelab.errors import TunelabError
from tunelab.evaluate import forgetting, registry
from tunelab.evaluate.generation import generate_texts
from tunelab.evaluate.loss import row_losses
from tunelab.evaluate.metrics import exact_match, normalized_match
from tunelab.evaluate.plan import EvalPlan, plan_evaluation
from tunelab.files import write_json, write_jsonl
from tunelab.inference import RunModels
from tunelab.models.load import model_stop_ids

EVAL_FORMAT = 2  # eval.json layout; 1 had no intervals, flips or forgetting
MODELS = ("base", "tuned")


@dataclass
class ModelRun:
    """What one model produced on the test rows and the probes."""

    texts: list[str]
    losses: list[tuple[float, int]]
    row_tokens: list[int]
    tokens_per_second: float
    rows_per_second: float
    probe: dict[str, Any] = field(default_factory=dict)


def evaluate_run(models: RunModels, console: Console, max_rows: int | None = None,
                 recipe: Recipe | None = None) -> dict[str, Any]:
    """Evaluate base and tuned on the run's test rows. `recipe` may differ from the run's in eval and objective."""
    from tunelab.evaluate.gate import check_objective

    recipe = recipe or models.recipe
    options = recipe.eval
    test = read_splits(models.run.data).test[: max_rows or options.max_rows]
    plan = plan_evaluation(test, options, recipe.objective, where=str(models.run.root))
    if plan.kind != "chat":
        raise TunelabError(f"{models.run.root}: '{plan.kind}' test rows are scored by their task's own evaluation; "
                           "base-vs-tuned generation needs conversation rows with answers")
    probe = forgetting.load_probe(options.forgetting)
    tokenizer = models.tokenizer()
    prompts = [encode_prompt(tokenizer, prompt_and_reference(example.messages)[0]) for example in test]
    longest_reference = max(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in plan.references)
    # Same cap for both models: room for twice the longest reference, so a right answer is never cut off.
    max_new_tokens = min(options.max_new_tokens, 2 * longest_reference + 16)
    bf16 = models.record.get("precision") == "bf16"
    console.print(f"[bold]eval[/bold] {len(test)} test rows, greedy, max {max_new_tokens} new tokens, "
                  f"batch {options.batch_size}; metrics: {', '.join(plan.metrics)}")

    runs: dict[str, ModelRun] = {}
    for label, load in (("base", models.base), ("tuned", models.tuned)):
        base_answers = runs["base"].probe.get("prompt_answers") if label == "tuned" else None
        runs[label] = run_model(load, tokenizer, test, prompts, max_new_tokens, recipe, bf16, probe, base_answers)
        console.print(f"  {label}: {runs[label].tokens_per_second:.0f} generated tokens/s, "
                      f"{runs[label].rows_per_second:.2f} rows/s")

    report = score_runs(plan, runs, options.bootstrap, options.confidence, options.seed)
    report["decoding"] = {"strategy": "greedy", "max_new_tokens": max_new_tokens, "batch_size": options.batch_size,
                          "kv_cache": True, "padding": "left"}
    examples = example_rows(test, plan, runs, tokenizer)
    report["flips"] = count_flips(examples, plan.correctness)
    if probe is not None:
        fo = options.forgetting
        report["forgetting"] = forgetting.summarize(probe, runs["base"].probe, runs["tuned"].probe, fo.threshold,
                                                    options.bootstrap, options.confidence, options.seed)
        write_jsonl(models.run.forgetting_answers,
                    forgetting.prompt_answers(probe, runs["base"].probe, runs["tuned"].probe))
    else:
        report["forgetting"] = None
    report["objective"] = check_objective(recipe.objective, report)
    write_json(models.run.eval_json, report)
    write_jsonl(models.run.eval_examples, examples)
    write_jsonl(models.run.eval_worst, worst_examples(test, plan.references, runs, options.worst_examples))
    return report


def run_model(load: Callable[[], Any], tokenizer: Any, test: list, prompts: list[list[int]], max_new_tokens: int,
              recipe: Recipe, bf16: bool, probe: forgetting.Probe | None,
              base_answers: list[str] | None) -> ModelRun:
    options, max_length = recipe.eval, recipe.data.max_length
    model = load()
    stop_ids = stop_token_ids(tokenizer, model_stop_ids(model))
    encoded = [encode_conversation(tokenizer, example.messages, stop_ids) for example in test]
    encoded = [Encoded(row.input_ids[:max_length], row.labels[:max_length]) for row in encoded]
    losses = row_losses(model, encoded, tokenizer.pad_token_id, autocast_bf16=bf16)
    generated = generate_texts(model, tokenizer, prompts, max_new_tokens, options.batch_size, sorted(stop_ids),
                               autocast_bf16=bf16)
    probed = {}
    if probe is not None:
        probed = forgetting.run_probe(model, tokenizer, probe, stop_ids, max_length,
                                      options.forgetting.max_new_tokens, options.batch_size, bf16, base_answers)
    del model
    gc.collect()
    return ModelRun(generated.texts, losses, generated.row_tokens, generated.tokens_per_second,
                    generated.rows_per_second, probed)


def score_runs(plan: EvalPlan, runs: dict[str, ModelRun], resamples: int, confidence: float,
               seed: int) -> dict[str, Any]:
    """Metric values of both models, their differences and paired bootstrap intervals, per-metric details."""
    from tunelab.evaluate.bootstrap import paired_intervals, resample_weights

    inputs = {label: registry.RowInputs(runs[label].texts, plan.references, runs[label].losses, plan.labels)
              for label in MODELS}
    stats = {label: registry.row_statistics(plan.metrics, inputs[label]) for label in MODELS}
    values = {label: registry.scores(stats[label]) for label in MODELS}
    intervals = None
    if resamples:
        weights = resample_weights(len(plan.references), resamples, seed)
        per_metric = {name: paired_intervals(registry.METRICS[name].score, stats["base"][name],
                                             stats["tuned"][name], weights, confidence) for name in plan.metrics}
        intervals = {"confidence": confidence, "resamples": resamples, "method": "paired percentile bootstrap",
                     **{label: {name: per_metric[name][label] for name in plan.metrics}
                        for label in ("base", "tuned", "delta")}}
    report: dict[str, Any] = {
        "format": EVAL_FORMAT,
        "rows": len(plan.references),
        "kind": plan.kind,
        "metrics": plan.metrics,
        "primary_metric": plan.primary,
        "units": {name: registry.METRICS[name].unit for name in plan.metrics},
        "base": {**values["base"], "generation_tokens_per_second": runs["base"].tokens_per_second},
        "tuned": {**values["tuned"], "generation_tokens_per_second": runs["tuned"].tokens_per_second},
        "delta": {name: values["tuned"][name] - values["base"][name] for name in plan.metrics},
        "intervals": intervals,
        "details": {label: metric_details(plan, inputs[label]) for label in MODELS},
    }
    return report


def metric_details(plan: EvalPlan, inputs: registry.RowInputs) -> dict[str, Any]:
    details: dict[str, Any] = {}
    if plan.labels:
        details["labels"] = registry.label_details(inputs)
    if "json_field_accuracy" in plan.metrics:
        details["json_fields"] = registry.json_field_details(inputs)
    return details


def row_correct(name: str, prediction: str, reference: str) -> bool:
    if name == "json_match":
        return registry.json_match_hit(prediction, reference)
    if name == "normalized_match":
        return normalized_match(prediction, reference)
    return exact_match(prediction, reference)  # exact_match, and accuracy (a class answer is its stripped text)


def similarity(prediction: str, reference: str) -> float:
    """Sentence chrF (sacrebleu), 0-100: how close an answer is to the reference even when not right."""
    import sacrebleu

    return float(sacrebleu.sentence_chrf(prediction, [reference]).score)


def example_rows(test: list, plan: EvalPlan, runs: dict[str, ModelRun], tokenizer: Any) -> list[dict[str, Any]]:
    """Every test row with both answers, right/wrong by the plan's correctness metric, the flip, closeness and loss."""
    rows = []
    for index, (example, reference) in enumerate(zip(test, plan.references)):
        row: dict[str, Any] = {"index": index, "source": example.where,
                               "prompt": prompt_and_reference(example.messages)[0], "reference": reference,
                               "reference_tokens": len(tokenizer(reference, add_special_tokens=False)["input_ids"]),
                               "answer_tokens": runs["tuned"].losses[index][1]}
        for label in MODELS:
            text = runs[label].texts[index]
            total, count = runs[label].losses[index]
            row[label] = text
            row[f"{label}_correct"] = row_correct(plan.correctness, text, reference)
            row[f"{label}_similarity"] = similarity(text, reference)
            row[f"{label}_loss"] = total / count if count else math.nan
            row[f"{label}_tokens"] = runs[label].row_tokens[index]
        row["flip"] = flip(row["base_correct"], row["tuned_correct"])
        rows.append(row)
    return rows


def flip(base_correct: bool, tuned_correct: bool) -> str:
    if base_correct and tuned_correct:
        return "both_right"
    if tuned_correct:
        return "fixed"
    if base_correct:
        return "broken"
    return "both_wrong"


def count_flips(examples: list[dict[str, Any]], judged_by: str) -> dict[str, Any]:
    counts = {name: 0 for name in ("fixed", "broken", "both_right", "both_wrong")}
    for row in examples:
        counts[row["flip"]] += 1
    return {**counts, "judged_by": judged_by}


def regressions(examples: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """Rows where tuned did worse than base: broken ones first, then by how much closer base was to the reference."""
    worse = [row for row in examples
             if row["flip"] == "broken" or (row["flip"] != "fixed"
                                            and row["tuned_similarity"] < row["base_similarity"])]
    worse.sort(key=lambda row: (row["flip"] != "broken", row["tuned_similarity"] - row["base_similarity"]))
    return worse[:count]


def worst_examples(test: list, references: list[str], runs: dict[str, ModelRun], count: int) -> list[dict[str, Any]]:
    """The rows the tuned model found hardest (highest answer loss), with both models' outputs."""
    row_loss = [total / tokens if tokens else float("nan") for total, tokens in runs["tuned"].losses]
    order = sorted(range(len(test)), key=lambda i: row_loss[i], reverse=True)[:count]
    return [
        {
            "source": test[i].where,
            "prompt": test[i].messages[:-1] if test[i].messages[-1]["role"] == "assistant" else test[i].messages,
            "reference": references[i],
            "base": runs["base"].texts[i],
            "tuned": runs["tuned"].texts[i],
            "base_correct": exact_match(runs["base"].texts[i], references[i]),
            "tuned_correct": exact_match(runs["tuned"].texts[i], references[i]),
            "tuned_loss": row_loss[i],
        }
        for i in order
    ]


def format_value(key: str, value: float | None, signed: bool = False) -> str:
    """A metric's value as people read it: rates in percent (a change in points), losses to four places."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    metric = registry.METRICS.get(key)
    sign = "+" if signed else ""
    if metric is not None and metric.unit == "rate":
        return f"{100 * value:{sign}.1f}" + (" pts" if signed else "%")
    digits = 2 if metric is not None and metric.scale == 100 else 4  # the same decimals for a value and its interval
    return f"{value:{sign}.{digits}f}"


def format_delta(key: str, value: float | None) -> str:
    return format_value(key, value, signed=True)


def format_interval(key: str, interval: list[float] | None, signed: bool = False) -> str:
    if not interval:
        return ""
    show = format_delta if signed else format_value
    return f"[{show(key, interval[0]).replace(' pts', '')}, {show(key, interval[1])}]"


def better(key: str, delta: float) -> bool | None:
    if not delta or math.isnan(delta):
        return None
    higher = registry.METRICS[key].higher_is_better if key in registry.METRICS else False
    return delta > 0 if higher else delta < 0


def comparison_table(report: dict[str, Any]) -> Table:
    """Base, tuned and the change per metric, with the change's bootstrap interval (the per-model intervals are in
    eval.json and the report)."""
    intervals = report.get("intervals") or {}
    table = Table(title=f"base vs tuned on {report['rows']} held-out rows")
    columns = ["metric", "base", "tuned", "change"]
    if intervals:
        columns.append(f"{100 * intervals['confidence']:.0f}% interval")
    for column in columns:
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key in report["delta"]:
        base, tuned, delta = report["base"][key], report["tuned"][key], report["delta"][key]
        colour = {True: "green", False: "red", None: "white"}[better(key, delta)]
        name = f"{key} *" if key == report.get("primary_metric") else key
        change = f"[{colour}]{format_delta(key, delta)}[/{colour}]"
        row = [name, format_value(key, base), format_value(key, tuned), change]
        if intervals:
            row.append(format_interval(key, intervals["delta"].get(key), signed=True))
        table.add_row(*row)
    return table


def forgetting_lines(forgetting_report: dict[str, Any] | None) -> list[str]:
    if not forgetting_report:
        return ["forgetting: not measured (eval.forgetting.enabled: false)"]
    lines = []
    for name, probe in forgetting_report["probes"].items():
        interval = probe.get("interval")
        span = f" [{100 * interval[0]:+.1f}%, {100 * interval[1]:+.1f}%]" if interval else ""
        flag = "  [red]FLAGGED[/red]" if probe["flagged"] else ""
        lines.append(f"forgetting {name}: perplexity {probe['base_perplexity']:.2f} -> {probe['tuned_perplexity']:.2f}"
                     f" ({100 * probe['relative_change']:+.1f}%{span}, {probe['rows']} rows){flag}")
    return lines


def flip_line(flips: dict[str, Any]) -> str:
    return (f"flips by {flips['judged_by']}: {flips['fixed']} fixed, {flips['broken']} broken, "
            f"{flips['both_right']} both right, {flips['both_wrong']} both wrong")
