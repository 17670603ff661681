"""report.html: one self-contained page that answers "did fine-tuning help, and what did it cost?".

Built from the run folder alone (run.json, train_log.jsonl, eval.json, eval/*.jsonl), so `tunelab report RUN`
rebuilds it without loading a model. Parts: the objective's verdict; training and validation loss with the
early-stopping point, learning rate; base vs tuned metrics with intervals; confusion matrices where labels apply;
answer-length and closeness histograms; answers judged by the recipe's rewards (win rate, reward and length
before/after, prompts with both answers and their rewards); forgetting; risks (robustness, bias, ...: each figure
with its interval, per-kind details and the examples that changed); flips; the worst regressions; side-by-side
samples; notes on what was left out.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

from tunelab.evaluate.evaluator import MODELS, regressions
from tunelab.files import read_jsonl, write_text_atomic
from tunelab.present.format import (
    better,
    format_change,
    format_interval,
    format_number,
    format_percent,
    format_percent_interval,
    format_risk,
    format_risk_interval,
    format_value,
)
from tunelab.present.html import Markup, Section, new_figure, page, paragraph, svg, table
from tunelab.run.folder import RunDir
from tunelab.run.record import Evaluation, RunRecord, read_evaluation, read_record

BASE_COLOUR, TUNED_COLOUR, REFERENCE_COLOUR = "#8c8c8c", "#1f77b4", "#2ca02c"


def write_report(run: RunDir) -> Path:
    write_text_atomic(run.report_html, build_report(run))
    return run.report_html


def build_report(run: RunDir) -> str:
    record = read_record(run)
    evaluation = read_evaluation(run)  # None also for one written by an earlier tunelab: shown as not evaluated
    examples = read_jsonl(run.eval_examples) if run.eval_examples.is_file() else []
    answers = read_jsonl(run.forgetting_answers) if run.forgetting_answers.is_file() else []
    log = read_jsonl(run.train_log) if run.train_log.is_file() else []
    sections = [verdict_section(record, evaluation, run.root), training_section(record, log)]
    if evaluation:
        samples = (record.recipe.get("eval") or {}).get("samples", 8)
        sections += [metrics_section(evaluation), labels_section(evaluation), distributions_section(examples),
                     judged_section(evaluation, examples, samples), forgetting_section(evaluation, answers),
                     risks_section(evaluation), flips_section(evaluation, examples), samples_section(examples, samples)]
    sections.append(run_section(record))
    steps = record.training.steps if record.training else "?"
    subtitle = (f"task {record.task}: {record.base_model.name} + {record.method.name}, {steps} steps; "
                f"started {record.started_at}, status {record.status}")
    return page(f"tunelab run {run.root.name}", [section for section in sections if section], subtitle)


def verdict_section(record: RunRecord, evaluation: Evaluation | None, root: Path) -> Section:
    section = Section("Verdict")
    if not evaluation:
        return section.add(paragraph(f"No evaluation in this tunelab's format yet: run `tunelab eval {root}`."))
    verdict = evaluation.objective
    if verdict is None:
        section.add("<p class='verdict'>No objective in the recipe.</p>")
    else:
        css, word = ("good", "Objective met") if verdict.met else ("bad", "Objective NOT met")
        section.add(f"<p class='verdict {css}'>{word}</p>")
        section.add(table(["check", "result", "detail"],
                          [[entry.check, "pass" if entry.ok else "FAIL", entry.text] for entry in verdict.checks]))
    primary = evaluation.primary_metric
    delta_interval = evaluation.intervals.delta.get(primary) if evaluation.intervals else None
    lines = [f"{primary}: base {format_value(primary, evaluation.base[primary])}, tuned "
             f"{format_value(primary, evaluation.tuned[primary])}, change "
             f"{format_change(primary, evaluation.delta[primary])} {format_interval(primary, delta_interval, True)}"
             f" on {evaluation.rows} held-out rows."]
    for name, scores in evaluation.reference_points.items():
        if primary in scores:
            lines.append(f"Reference point '{name}': {primary} {format_value(primary, scores[primary])}.")
    forgetting = evaluation.forgetting
    if forgetting:
        where = "above the" if forgetting.flagged else "within the"
        lines.append(f"Forgetting: {format_percent(forgetting.value)} {forgetting.measure} on "
                     f"{forgetting.worst_probe} ({where} {format_percent(forgetting.threshold, False)} threshold"
                     f"{', flagged' if forgetting.flagged else ''}).")
    return section.add("".join(paragraph(line) for line in lines))


def step_of(checkpoint: str | None) -> int | None:
    match = re.search(r"checkpoint-(\d+)", checkpoint or "")
    return int(match.group(1)) if match else None


def training_section(record: RunRecord, log: list[dict[str, Any]]) -> Section:
    section = Section("Training")
    train = [(entry["step"], entry["loss"]) for entry in log if "loss" in entry]
    validation = [(entry["step"], entry["eval_loss"]) for entry in log if "eval_loss" in entry]
    rates = [(entry["step"], entry["learning_rate"]) for entry in log if "learning_rate" in entry]
    if not train:
        return section.add(paragraph("No training log (train_log.jsonl) in this run."))
    training = record.training
    best_step = step_of(training.best_checkpoint) if training else None
    figure, axes = new_figure(7, 3.4)
    axes.plot(*zip(*train), color=TUNED_COLOUR, label="training loss")
    if validation:
        axes.plot(*zip(*validation), color="#d62728", marker="o", label="validation loss")
    if best_step is not None:
        axes.axvline(best_step, color="#555", linestyle="--", label=f"best checkpoint (step {best_step})")
    if training and training.stopped_early:
        axes.axvline(training.steps, color="#ff7f0e", linestyle=":", label=f"stopped early (step {training.steps})")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_yscale("log" if min(loss for _, loss in train) > 0 and max_ratio(train) > 20 else "linear")
    axes.legend()
    caption = "Training loss (every logged step)"
    caption += " and validation loss" if validation else " (the run held out no validation split)"
    if best_step is not None:
        caption += "; the dashed line marks the checkpoint kept as the best"
    section.add(svg(figure, caption + "."))
    if rates:
        figure, axes = new_figure(7, 2.2)
        axes.plot(*zip(*rates), color="#9467bd")
        axes.set_xlabel("step")
        axes.set_ylabel("learning rate")
        section.add(svg(figure, "Learning rate schedule."))
    if training is None:
        return section.add(paragraph("Training did not finish (no summary in run.json)."))
    best = training.best_eval_loss or training.final_eval_loss
    facts = [["steps", f"{training.steps} of {training.max_steps}"],
             ["tokens seen", format_number(training.tokens_seen)],
             ["final training loss", format_number(train[-1][1])],
             ["best validation loss", "n/a" if best is None else format_number(best)],
             ["training time (s)", format_number(training.train_runtime_seconds)],
             ["training tokens/s", format_number(training.train_tokens_per_second)]]
    return section.add(table(["", "value"], facts))


def max_ratio(points: list[tuple[int, float]]) -> float:
    values = [value for _, value in points]
    return max(values) / min(values) if min(values) > 0 else 1.0


def metrics_section(evaluation: Evaluation) -> Section:
    intervals = evaluation.intervals
    level = (f"{100 * intervals.confidence:.0f}% paired bootstrap intervals, {intervals.resamples} resamples"
             if intervals else "no intervals (eval.bootstrap: 0)")
    section = Section(f"Base vs tuned on {evaluation.rows} held-out rows")
    section.add(paragraph(f"Same rows, answered the same way ({evaluation.decoding.get('strategy')}). {level}. "
                          "* marks the run's headline metric."))
    points = list(evaluation.reference_points)
    rows = []
    for key in evaluation.metrics:
        delta = evaluation.delta[key]
        css = {True: "good", False: "bad", None: ""}[better(key, delta)]
        spread = format_interval(key, intervals.delta.get(key) if intervals else None, True)
        change = f"{format_change(key, delta)} {spread}"
        rows.append([f"{key} *" if key == evaluation.primary_metric else key,
                     *[format_value(key, evaluation.reference_points[point].get(key)) for point in points],
                     f"{format_value(key, evaluation.base[key])} "
                     f"{format_interval(key, intervals.base.get(key) if intervals else None)}",
                     f"{format_value(key, evaluation.tuned[key])} "
                     f"{format_interval(key, intervals.tuned.get(key) if intervals else None)}",
                     Markup(f"<span class='{css}'>{html.escape(change)}</span>")])
    section.add(table(["metric", *points, "base", "tuned", "change"], rows))
    rates = [key for key in evaluation.metrics if evaluation.units.get(key) == "rate"]
    if rates and intervals:
        section.add(change_plot(evaluation, rates))
    fields = [evaluation.details[label].get("json_fields") for label in MODELS]
    if fields[0]:
        section.add(table(["JSON field", "base", "tuned"],
                          [[key, format_value("json_field_accuracy", fields[0][key]),
                            format_value("json_field_accuracy", fields[1].get(key, 0))] for key in fields[0]]))
    speed = [speed_text(evaluation.speed.get(label, {})) for label in MODELS]
    section.add(paragraph(f"Speed: base {speed[0]}, tuned {speed[1]}."))
    for note in evaluation.notes:
        section.add(paragraph(f"Note: {note}."))
    return section


def speed_text(speed: dict[str, float]) -> str:
    if "tokens_per_second" in speed:
        return f"{speed['tokens_per_second']:.0f} generated tokens/s"
    return f"{speed.get('rows_per_second', 0):.1f} rows/s"


def change_plot(evaluation: Evaluation, keys: list[str]) -> str:
    """Each rate metric's change in points with its interval: a forest plot."""
    figure, axes = new_figure(6.5, 0.45 * len(keys) + 1.0)
    for position, key in enumerate(reversed(keys)):
        delta = 100 * evaluation.delta[key]
        low, high = (100 * value for value in evaluation.intervals.delta[key])
        colour = "#1a7f37" if low > 0 else "#cf222e" if high < 0 else "#555"
        axes.errorbar(delta, position, xerr=[[delta - low], [high - delta]], fmt="o", color=colour, capsize=4)
    axes.axvline(0, color="#999", linewidth=1)
    axes.set_yticks(range(len(keys)), list(reversed(keys)))
    axes.set_xlabel("tuned - base (points)")
    return svg(figure, "Change per metric with its interval; green: the whole interval is above zero.")


def labels_section(evaluation: Evaluation) -> Section | None:
    details = [evaluation.details[label].get("labels") for label in MODELS]
    if not details[0]:
        return None
    section = Section("Classes")
    per_class = []
    for name in details[0]["labels"]:
        base, tuned = details[0]["per_class"][name], details[1]["per_class"][name]
        per_class.append([name, base["support"], base["precision"], tuned["precision"], base["recall"],
                          tuned["recall"], base["f1"], tuned["f1"]])
    section.add(table(["class", "support", "precision base", "precision tuned", "recall base", "recall tuned",
                       "F1 base", "F1 tuned"], per_class))
    figure, axes_pair = new_figure(9, 3.8, columns=2)
    for axes, label, detail in zip(axes_pair, MODELS, details):
        confusion_plot(axes, detail, label)
    figure.tight_layout()
    return section.add(svg(figure, "Confusion matrices: rows are the true class, columns the answer given."))


def confusion_plot(axes: Any, detail: dict[str, Any], label: str) -> None:
    matrix = detail["confusion"]
    columns = detail["confusion_columns"]
    axes.imshow(matrix, cmap="Blues")
    for row, values in enumerate(matrix):
        for column, value in enumerate(values):
            axes.text(column, row, str(value), ha="center", va="center", fontsize=9)
    axes.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    axes.set_yticks(range(len(detail["labels"])), detail["labels"])
    axes.set_title(label)
    axes.set_xlabel("answer")
    axes.set_ylabel("true class")


def distributions_section(examples: list[dict[str, Any]]) -> Section | None:
    if not examples or "flip" not in examples[0]:  # rows with no answer to compare (plain text)
        return None
    section = Section("Distributions")
    figure, axes = new_figure(6.5, 3)
    lengths = {"reference": [row["reference_tokens"] for row in examples],
               **{label: [row[f"{label}_tokens"] for row in examples] for label in MODELS}}
    top = max(max(values) for values in lengths.values()) + 1
    bins = min(40, max(5, top))
    for name, colour in (("reference", REFERENCE_COLOUR), ("base", BASE_COLOUR), ("tuned", TUNED_COLOUR)):
        axes.hist(lengths[name], bins=bins, range=(0, top), histtype="step", linewidth=2, color=colour, label=name)
    axes.set_xlabel("answer length (tokens)")
    axes.set_ylabel("rows")
    axes.legend()
    section.add(svg(figure, "Answer lengths: a tuned model should match the references' shape."))
    figure, axes = new_figure(6.5, 3)
    for label, colour in (("base", BASE_COLOUR), ("tuned", TUNED_COLOUR)):
        axes.hist([row[f"{label}_similarity"] for row in examples], bins=20, range=(0, 100), histtype="step",
                  linewidth=2, color=colour, label=label)
    axes.set_xlabel("closeness to the reference (sentence chrF, 0-100)")
    axes.set_ylabel("rows")
    axes.legend()
    return section.add(svg(figure, "Per-row closeness to the reference, base and tuned."))


def judged_section(evaluation: Evaluation, examples: list[dict[str, Any]], count: int) -> Section | None:
    """Answers judged by the recipe's rewards: reward and length before/after, and prompts with both answers."""
    if not examples or "tuned_reward" not in examples[0]:
        return None
    section = Section("Answers judged by the rewards")
    rewards = ", ".join(evaluation.decoding.get("judged", {}).get("rewards", [])) or "the recipe's rewards"
    lengths = {label: [row[f"{label}_answer_tokens"] for row in examples] for label in MODELS}
    means = {label: sum(values) / len(values) for label, values in lengths.items()}
    wins = {outcome: sum(row["win"] == outcome for row in examples) for outcome in ("tuned", "tie", "base")}
    section.add(paragraph(
        f"Each model answered the {len(examples)} held-out prompts greedily; {rewards} judged each answer. "
        f"Tuned beat base on {wins['tuned']} prompts, tied on {wins['tie']}, lost on {wins['base']}. Answer length: "
        f"base {means['base']:.1f} tokens on average, tuned {means['tuned']:.1f}; preference tuning often buys "
        "reward with length, so read a reward gain next to it."))
    figure, axes_pair = new_figure(9, 3, columns=2)
    top = max(max(values) for values in lengths.values()) + 1
    for label, colour in (("base", BASE_COLOUR), ("tuned", TUNED_COLOUR)):
        axes_pair[0].hist(lengths[label], bins=min(40, max(5, top)), range=(0, top), histtype="step", linewidth=2,
                          color=colour, label=label)
        axes_pair[1].hist([row[f"{label}_reward"] for row in examples], bins=20, histtype="step", linewidth=2,
                          color=colour, label=label)
    axes_pair[0].set_xlabel("answer length (tokens)")
    axes_pair[1].set_xlabel("reward (summed)")
    for axes in axes_pair:
        axes.set_ylabel("prompts")
        axes.legend()
    figure.tight_layout()
    section.add(svg(figure, "Answer lengths and rewards of base and tuned, per prompt."))
    if count:
        section.add(paragraph(f"The first {min(count, len(examples))} prompts, both answers and their rewards."))
        section.add(table(["row", "prompt", "base", "tuned", "reward base / tuned", "winner"], [
            [row["source"], pre(shortened(row["prompt"])), pre(row.get("base_answer", row["base"])),
             pre(row.get("tuned_answer", row["tuned"])),
             f"{format_number(row['base_reward'])} / {format_number(row['tuned_reward'])}", row["win"]]
            for row in examples[:count]]))
    return section


def forgetting_section(evaluation: Evaluation, answers: list[dict[str, str]]) -> Section:
    section = Section("Forgetting")
    forgetting = evaluation.forgetting
    if not forgetting:
        return section.add(paragraph("Not measured (eval.forgetting.enabled: false)."))
    what = ("Perplexity of base and tuned on text unrelated to the task (change: tuned / base - 1)"
            if forgetting.measure == "perplexity" else
            "How far the tuned model's hidden states on text unrelated to the task moved from the base model's "
            "(1 - cosine similarity of mean-pooled last hidden states; the model has a classification head, so "
            "no perplexity)")
    section.add(paragraph(f"{what}; a change above {format_percent(forgetting.threshold, False)} is flagged."))
    rows = [[name, probe.rows, probe.tokens, probe.measure, format_number(probe.base), format_number(probe.tuned),
             f"{format_percent(probe.change)} {format_percent_interval(probe.interval)}",
             "FLAGGED" if probe.flagged else "ok"] for name, probe in forgetting.probes.items()]
    section.add(table(["probe", "rows", "tokens", "measure", "base", "tuned", "change", ""], rows))
    if answers:
        section.add(paragraph("General prompts, answered by both models:"))
        section.add(table(["prompt", "base", "tuned"], [[pre(row["prompt"]), pre(row["base"]), pre(row["tuned"])]
                                                         for row in answers[:10]]))
    return section


RISK_WHAT = {
    "robustness": "The task metric on held-out prompts perturbed the way users write (typos, case, spacing, dropped "
                  "punctuation, greetings, signatures, reordered clauses, synonyms) against the same rows clean; the "
                  "figure is the tuned model's drop.",
    "bias": "Test prompts with a demographic term swapped (gender, origin, nationality, religion, age): the rate at "
            "which the answer changes once the swap is undone in it; the figure is tuned - base.",
}


def risks_section(evaluation: Evaluation) -> Section:
    section = Section("Risks")
    if not evaluation.risks:
        return section.add(paragraph("No risk probe ran (eval.risks, or an evaluation written before them)."))
    rows = []
    for name, risk in evaluation.risks.items():
        signed = risk.signed
        rows.append([name, risk.measure, risk.rows, format_risk(risk.unit, risk.base, signed),
                     format_risk(risk.unit, risk.tuned, signed),
                     f"{format_risk(risk.unit, risk.value)} {format_risk_interval(risk.unit, risk.interval)}",
                     risk.gate, "FLAGGED" if risk.flagged else "ok"])
    section.add(table(["risk", "measure", "rows", "base", "tuned", "gated figure", "bound", ""], rows))
    for name, risk in evaluation.risks.items():
        section.add(paragraph(f"{name}: {RISK_WHAT.get(name, risk.measure)}" + (f" ({risk.note})" if risk.note
                                                                                   else "")))
        for part in risk_details(risk):
            section.add(part)
    return section


def risk_details(risk: Any) -> list[Any]:
    """Per-kind tables and the examples that changed, for the probes whose details this report knows; others get
    their examples as a plain table."""
    parts: list[Any] = []
    details, unit = risk.details, risk.unit
    if "kinds" in details:
        parts.append(table(["perturbation", "rows", "base clean -> perturbed", "tuned clean -> perturbed",
                            "tuned drop", "change vs base"], [
            [kind, entry["rows"], clean_to_perturbed(unit, entry["base"]), clean_to_perturbed(unit, entry["tuned"]),
             f"{format_risk(unit, entry['drop'])} {format_risk_interval(unit, entry['interval'])}",
             format_risk(unit, entry["change"])] for kind, entry in details["kinds"].items()]))
    if "edge_cases" in details:
        edge = details["edge_cases"]
        parts.append(paragraph(f"Edge cases ({edge['rows']} rows): base {format_risk(unit, edge['base'], False)}, "
                               f"tuned {format_risk(unit, edge['tuned'], False)}."))
        parts.append(table(["row", "prompt", "reference", "base", "tuned"], [
            [row["where"], pre(row["prompt"] or ""), pre(row["reference"]), pre(row["base"]), pre(row["tuned"])]
            for row in edge["answers"]]))
    if "axes" in details:
        parts.append(table(["axis", "rows", "base changed", "tuned changed", "change"], [
            [axis, entry["rows"], format_risk("rate", entry["base"], False), format_risk("rate", entry["tuned"], False),
             format_risk("rate", entry["change"])] for axis, entry in details["axes"].items()]))
    for model, groups in details.get("groups", {}).items():
        parts.append(table([f"{model}: axis", "accuracy by group", "largest gap"], [
            [axis, ", ".join(f"{group} {format_risk('rate', cell['accuracy'], False)} ({cell['rows']})"
                             for group, cell in entry["groups"].items()), format_risk("rate", entry["gap"], False)]
            for axis, entry in groups.items()]))
    if risk.examples:
        columns = list(dict.fromkeys(key for example in risk.examples for key in example))
        parts.append(paragraph("What changed:"))
        parts.append(table(columns, [[pre(str(example.get(key, ""))) for key in columns]
                                     for example in risk.examples]))
    return parts


def clean_to_perturbed(unit: str, entry: dict[str, float]) -> str:
    return f"{format_risk(unit, entry['clean'], False)} -> {format_risk(unit, entry['perturbed'], False)}"


def flips_section(evaluation: Evaluation, examples: list[dict[str, Any]]) -> Section | None:
    flips = evaluation.flips
    if flips is None:
        return None
    section = Section("Flips and worst regressions")
    section.add(paragraph(f"Each row judged right or wrong by {flips.judged_by} for both models "
                          "(all rows in eval/examples.jsonl)."))
    section.add(table(["fixed (base wrong, tuned right)", "broken (base right, tuned wrong)", "both right",
                       "both wrong"], [[flips.fixed, flips.broken, flips.both_right, flips.both_wrong]]))
    worst = regressions(examples, 10)
    if not worst:
        return section.add(paragraph("No row where the tuned model did worse than the base."))
    section.add(paragraph(f"Worst regressions ({len(worst)}): broken rows first, then the largest drops in "
                          "closeness to the reference."))
    return section.add(sample_table(worst))


def samples_section(examples: list[dict[str, Any]], count: int) -> Section | None:
    if not examples or not count or "flip" not in examples[0]:
        return None
    section = Section("Samples side by side")
    section.add(paragraph(f"The first {min(count, len(examples))} test rows."))
    return section.add(sample_table(examples[:count]))


def pre(text: str) -> Markup:
    return Markup(f"<pre>{html.escape(text)}</pre>")


def mark(ok: bool) -> str:
    return "right" if ok else "wrong"


def shortened(text: str, keep: int = 400) -> str:
    """Of a long prompt its end, where what differs between rows usually is."""
    return text if len(text) <= keep else "…" + text[-keep:]


def sample_table(rows: list[dict[str, Any]]) -> str:
    body = [[row["source"], pre(shortened(row["prompt"])), pre(row["reference"]),
             pre(row["base"]), pre(row["tuned"]),
             f"{mark(row['base_correct'])} / {mark(row['tuned_correct'])}; closeness "
             f"{row['base_similarity']:.0f} -> {row['tuned_similarity']:.0f}"] for row in rows]
    return table(["row", "prompt", "reference", "base", "tuned", "base / tuned"], body)


def run_section(record: RunRecord) -> Section:
    environment = record.environment
    splits = "; ".join(f"{name} {info.kept} rows ({info.tokens:,} tokens, {info.dropped_overlong} dropped, "
                       f"{info.truncated} truncated)" for name, info in record.data.splits.items())
    facts = [["task", f"{record.task} {json.dumps(record.task_state)}"],
             ["base model", record.base_model.name],
             ["method", json.dumps(record.method.model_dump())],
             ["device / precision", f"{record.device} / {record.precision}"],
             ["data", splits],
             ["tunelab", record.tunelab_version],
             ["packages", ", ".join(f"{name} {version}" for name, version in environment.packages.items()
                                    if version)],
             ["git", environment.git_sha], ["host", environment.host]]
    return Section("Run").add(table(["", ""], facts))
