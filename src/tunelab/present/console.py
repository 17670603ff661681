"""What tunelab prints in the terminal: rich tables and lines drawn from the domain's objects and dictionaries.

Numbers go through present/format.py, as in the HTML report and the model card.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from tunelab.present.format import (
    better,
    format_change,
    format_interval,
    format_number,
    format_percent,
    format_percent_interval,
    format_value,
)
from tunelab.present.tables import Column, fitted_table

if TYPE_CHECKING:
    from tunelab.data.cache import Prepared
    from tunelab.monitor.feedback_export import Export
    from tunelab.monitor.report import ModelStats
    from tunelab.monitor.scores import Score
    from tunelab.risks.base import RiskResult
    from tunelab.run.folder import RunDir
    from tunelab.run.listing import RunSummary
    from tunelab.run.record import Evaluation, Forgetting, RunRecord, Verdict


# ---- the data doctor ------------------------------------------------------------------------------------------


def print_data_report(console: Console, report: dict[str, Any]) -> None:
    counts = report["counts"]
    files = Table(title="rows by file: read = kept + rejected")
    for column in ("file", "role", "read", "kept", "rejected"):
        files.add_column(column, justify="left" if column in ("file", "role") else "right")
    for item in report["files"]:
        role = "train" if item["role"] == "generated" else item["role"]
        numbers = counts["by_file"].get(role, {})
        files.add_row(item["path"], item["role"], *(f"{numbers.get(k, 0):,}" for k in ("read", "kept", "rejected")))
    files.add_row("all", "", f"{counts['read']:,}", f"{counts['kept']:,}", f"{counts['rejected']:,}", style="bold")
    console.print(files)

    splits = Table(title="splits")
    for column in ("split", "rows", "added", "tokens", "median len", "max len", "truncated", "classes"):
        splits.add_column(column, justify="left" if column in ("split", "classes") else "right")
    for name, info in report["splits"].items():
        classes = ", ".join(f"{label} {count}" for label, count in list(info["labels"].items())[:6])
        splits.add_row(name, f"{info['rows']:,}", f"{info['added']:,}", f"{info['tokens']:,}",
                       str(info["length"].get("median", "-")), str(info["length"].get("max", "-")),
                       f"{info['truncated']:,}", classes)
    console.print(splits)

    if report["rejected_by_stage"]:
        stages = Table(title="rejected rows (all in rejected.jsonl, with file, line and reason)")
        stages.add_column("stage")
        stages.add_column("rows", justify="right")
        stages.add_column("first example")
        for stage, count in report["rejected_by_stage"].items():
            first = report["first_rejected"][stage]
            stages.add_row(stage, f"{count:,}", f"{first['source']}:{first['line']}: {first['reason']}")
        console.print(stages)

    dup, cont, pii = report["duplicates"], report["contamination"], report["pii"]
    console.print(f"[bold]duplicates[/bold] exact {dup['exact']:,}, near {dup['near']:,}, label conflicts "
                  f"{dup['label_conflicts']:,}, across splits {dup['across_splits']:,}")
    removed = sum(hit["removed"] for hit in cont["hits"])
    console.print(f"[bold]contamination[/bold] {len(cont['hits']):,} evaluation row(s) with >= "
                  f"{cont['threshold']:.0%} of their {cont['ngram']}-grams in train; {removed:,} removed")
    found = ", ".join(f"{kind} {count:,}" for kind, count in pii["counts"].items()) or "none"
    action = "replaced by placeholders" if pii["scrubbed"] else "counted only; data.pii.scrub: true replaces them"
    console.print(f"[bold]personal data[/bold] {found} ({action})")
    length = report["length"]
    console.print(f"[bold]length[/bold] max_length {length['max_length']}: {length['dropped']:,} row(s) rejected, "
                  f"{length['truncated']:,} truncated")
    if report["augmented"]:
        console.print(f"[bold]augmented[/bold] {', '.join(f'{k} +{v:,}' for k, v in report['augmented'].items())}")
    print_lint(console, report["lint"])
    for problem in report["problems"]:
        console.print(f"[bold red]problem[/bold red] {problem}", markup=True, highlight=False)


def print_lint(console: Console, lint: dict[str, Any]) -> None:
    from rich.text import Text

    if lint["skipped"]:
        console.print(f"[bold]template lint[/bold] skipped: {lint['skipped']}")
        return
    marks = " ".join(f"{'[green]ok[/green]' if c['passed'] else '[red]FAIL[/red]'} {c['name']}"
                     for c in lint["checks"])
    console.print(f"[bold]template lint[/bold] {marks}")
    for example in lint["examples"][:1]:
        console.print(f"[dim]{example['where']} as trained; the loss falls on the highlighted text:[/dim]")
        console.print(Text.assemble(*[(text, "black on yellow" if loss else "") for text, loss in example["segments"]]))


def print_doctor(console: Console, prepared: "Prepared", run: "RunDir") -> None:
    counts = prepared.report["counts"]
    console.print(f"[bold]data doctor[/bold] {counts['rejected']:,} of {counts['read']:,} rows rejected (reasons in "
                  f"{run.data / 'rejected.jsonl'}, report in data_report.html); "
                  f"{'prepared data reused (cache hit)' if prepared.from_cache else 'data prepared now and cached'}")


# ---- a run ----------------------------------------------------------------------------------------------------


def print_plan(console: Console, record: "RunRecord", run: "RunDir") -> None:
    splits, method = record.data.splits, record.method
    rows = ", ".join(f"{name} {info.kept}" for name, info in splits.items())
    skipped = sum(info.dropped_overlong for info in splits.values())
    truncated = sum(info.truncated for info in splits.values())
    start = record.started_from
    base = record.base_model.name + (f" as tuned by {start.run} ({start.task})" if start else "")
    console.print(f"[bold]run[/bold] {run.root}  task {record.task}  base {base}  method "
                  f"{method.name} ({method.trainable_parameters:,} of {method.total_parameters:,} parameters trained)")
    console.print(f"[bold]data[/bold] rows: {rows}; over max_length: {skipped} dropped, {truncated} truncated; "
                  f"{splits['train'].tokens:,} train tokens  [bold]device[/bold] {record.device} {record.precision}")


def print_trained(console: Console, record: "RunRecord", run: "RunDir") -> None:
    training = record.training
    console.print(f"[bold green]trained[/bold green] {training.steps} steps, {training.tokens_seen:,} tokens, "
                  f"{training.train_tokens_per_second or 0:.0f} tokens/s; saved {run.model}")


def print_evaluation(console: Console, evaluation: "Evaluation") -> None:
    console.print(comparison_table(evaluation))
    labels = evaluation.details["tuned"].get("labels")
    if labels:
        console.print(confusion_text(labels, "tuned"), markup=False)
    for line in forgetting_lines(evaluation.forgetting):
        console.print(line)
    for line in risk_lines(evaluation.risks):
        console.print(line, highlight=False)
    if evaluation.flips:
        flips = evaluation.flips
        console.print(f"flips by {flips.judged_by}: {flips.fixed} fixed, {flips.broken} broken, {flips.both_right} "
                      f"both right, {flips.both_wrong} both wrong")
    for note in evaluation.notes:
        console.print(f"[dim]{note}[/dim]")


def comparison_table(evaluation: "Evaluation") -> Table:
    """Base, tuned and the change per metric, with the change's bootstrap interval (the per-model intervals are in
    eval.json and the report); reference points (the majority class) as columns of their own; per-class F1."""
    intervals = evaluation.intervals
    table = Table(title=f"base vs tuned on {evaluation.rows} held-out rows")
    points = list(evaluation.reference_points)
    columns = ["metric", *points, "base", "tuned", "change"]
    if intervals:
        columns.append(f"{100 * intervals.confidence:.0f}% interval")
    for column in columns:
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key in evaluation.metrics:
        base, tuned, delta = evaluation.base[key], evaluation.tuned[key], evaluation.delta[key]
        colour = {True: "green", False: "red", None: "white"}[better(key, delta)]
        name = f"{key} *" if key == evaluation.primary_metric else key
        reference = [format_value(key, evaluation.reference_points[point].get(key)) for point in points]
        row = [name, *reference, format_value(key, base), format_value(key, tuned),
               f"[{colour}]{format_change(key, delta)}[/{colour}]"]
        if intervals:
            row.append(format_interval(key, intervals.delta.get(key), signed=True))
        table.add_row(*row)
    per_class = [evaluation.details[label].get("labels") for label in ("base", "tuned")]
    if per_class[0]:
        for label in per_class[0]["labels"]:
            base, tuned = per_class[0]["per_class"][label]["f1"], per_class[1]["per_class"][label]["f1"]
            table.add_row(f"f1 {label}", *[""] * len(points), format_value("f1", base), format_value("f1", tuned),
                          format_change("f1", tuned - base), *([""] if intervals else []))
    return table


def confusion_text(details: dict[str, Any], model: str) -> str:
    labels, columns = details["labels"], details["confusion_columns"]
    width = max(len(label) for label in columns) + 2
    lines = [f"confusion ({model}; rows: true class, columns: answer given)",
             " " * width + "".join(f"{label:>{width}}" for label in columns)]
    for label, counts in zip(labels, details["confusion"]):
        lines.append(f"{label:<{width}}" + "".join(f"{count:>{width}}" for count in counts))
    return "\n".join(lines)


def forgetting_lines(forgetting: "Forgetting | None") -> list[str]:
    if forgetting is None:
        return ["forgetting: not measured (eval.forgetting.enabled: false)"]
    lines = []
    for name, probe in forgetting.probes.items():
        flag = "  [red]FLAGGED[/red]" if probe.flagged else ""
        span = f" {format_percent_interval(probe.interval)}" if probe.interval else ""
        if probe.measure == "perplexity":
            what = (f"perplexity {probe.base:.2f} -> {probe.tuned:.2f} ({format_percent(probe.change)}{span}, "
                    f"{probe.rows} rows)")
        else:
            what = f"hidden-state drift {format_percent(probe.change, signed=False)}{span} ({probe.rows} rows)"
        lines.append(f"forgetting {name}: {what}{flag}")
    return lines


def risk_lines(risks: dict[str, "RiskResult"]) -> list[str]:
    """One line per risk probe: its gated figure with interval, and base / tuned where they differ from it."""
    from tunelab.present.format import format_risk, format_risk_interval

    lines = []
    for name, risk in risks.items():
        flag = "  [red]FLAGGED[/red]" if risk.flagged else ""
        span = f" {format_risk_interval(risk.unit, risk.interval)}" if risk.interval else ""
        signed = risk.signed
        models = (f"; base {format_risk(risk.unit, risk.base, signed)}, tuned "
                  f"{format_risk(risk.unit, risk.tuned, signed)}" if risk.base is not None else "")
        lines.append(f"risk {name}: {format_risk(risk.unit, risk.value)}{span} ({risk.gate}; {risk.rows} rows"
                     f"{models}){flag}")
    return lines


def verdict_line(verdict: "Verdict | None") -> str:
    if verdict is None:
        return "[dim]no objective in the recipe: add an `objective:` section to gate on one[/dim]"
    if verdict.met:
        return f"[bold green]objective met[/bold green]: {verdict.summary}"
    return f"[bold red]objective NOT met[/bold red]: {verdict.summary}"


# ---- runs -----------------------------------------------------------------------------------------------------


RUN_COLUMNS = [
    Column("run"), Column("status", words=True), Column("task", rank=6), Column("model", rank=4),
    Column("steps", "right", rank=5), Column("metric", rank=1), Column("base", "right", rank=3),
    Column("tuned", "right"), Column("change", "right", rank=2), Column("forgetting", "right", rank=6),
    Column("objective", rank=2),
]


def runs_table(folder: Path, runs: list["RunSummary"], width: int = 200) -> Table:
    """One line per run; at `width` columns the least important (task, forgetting, steps, model) go first."""
    rows = []
    for run in runs:
        metric = run.primary
        change = "-" if metric is None or run.tuned is None else format_change(metric, run.tuned - run.base)
        objective = {None: "-", True: "[green]met[/green]", False: "[red]not met[/red]"}[run.verdict]
        model = Path(run.model).name if run.model else "-"
        name = run.path.name if run.path.parent == folder else str(run.path)  # the folder is in the title
        rows.append([name, run.status + (f" ({run.note})" if run.note else ""), run.task or "-",
                     f"{model} {run.method or ''}".strip(), format_number(run.steps), metric or "not evaluated",
                     "-" if metric is None else format_value(metric, run.base),
                     "-" if metric is None else format_value(metric, run.tuned), change,
                     "-" if run.forgetting is None else format_percent(run.forgetting), objective])
    return fitted_table(f"runs in {folder}", RUN_COLUMNS, rows, width)


MONITOR_COLUMNS = [
    Column("model"), Column("requests", "right"), Column("errors", "right", rank=3),
    Column("error rate", "right"), Column("p50 ms", "right"), Column("p95 ms", "right"),
    Column("p99 ms", "right", rank=2), Column("prompt tok", "right", rank=4), Column("completion tok", "right", rank=4),
    Column("tok/s per request", "right", rank=1),
]


def monitor_table(title: str, stats: list["ModelStats"], width: int = 200) -> Table:
    """Per model: volume, errors, latency percentiles, tokens; at `width` columns token counts go first."""
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    rows = [[item.model, f"{item.requests:,}", f"{item.errors:,}", f"{100 * item.error_rate:.1f}%", ms(item.p50_ms),
             ms(item.p95_ms), ms(item.p99_ms), f"{item.prompt_tokens:,}", f"{item.completion_tokens:,}",
             "-" if item.tokens_per_second is None else f"{item.tokens_per_second:.1f}"] for item in stats]
    return fitted_table(title, MONITOR_COLUMNS, rows, width)


def feedback_export_line(result: "Export", model: str, fmt: str, out: Path) -> str:
    """One line: rows written, what each doctor stage dropped, personal data scrubbed, the test splits checked."""
    from rich.markup import escape

    from tunelab.monitor.feedback_export import STAGES

    dropped = ", ".join(f"{result.dropped[stage]} {stage.replace('_', ' ')}" for stage in STAGES
                        if result.dropped.get(stage)) or "none"
    scrubbed = ", ".join(f"{count} {kind}" for kind, count in sorted(result.pii.items())) or "none"
    checked = (f"checked against {', '.join(str(path) for path in result.test_splits)}" if result.test_splits
               else "not checked (the base model answered: no run, no test split)")
    return escape(f"wrote {len(result.rows)} {fmt} rows to {out} from {result.feedback} feedback on '{model}' "
                  f"({result.made} made; dropped: {dropped}; personal data scrubbed: {scrubbed}; contamination "
                  f"{checked})")


def print_run_comparison(console: Console, comparison: dict[str, Any], first: Path, second: Path) -> None:
    metrics = Table(title=f"tuned metrics: A = {first}, B = {second}")
    for column in ("metric", "A", "B", "B - A"):
        metrics.add_column(column, justify="left" if column == "metric" else "right")
    for row in comparison["metrics"]:
        name = row["metric"]
        difference = format_change(name, row["difference"])
        if row["interval"]:
            difference += f" {format_interval(name, row['interval'], signed=True)}"
        metrics.add_row(name, format_value(name, row["a"]), format_value(name, row["b"]), difference)
    console.print(metrics)
    if not comparison["same_test_rows"]:
        console.print("[yellow]the runs were evaluated on different test rows: differences are not like for like"
                      "[/yellow]")
    facts = Table(title="runs")
    for column in ("", "A", "B"):
        facts.add_column(column)
    for key, a, b in comparison["facts"]:
        facts.add_row(key, format_number(a), format_number(b))
    console.print(facts)
    if comparison["recipe"]:
        recipe = Table(title="recipe differences")
        for column in ("key", "A", "B"):
            recipe.add_column(column)
        for key, a, b in comparison["recipe"]:
            recipe.add_row(key, repr(a), repr(b))
        console.print(recipe)
    else:
        console.print("same recipe (apart from output.dir)")


def simple_table(headers: list[str], body: list[list[str]], caption: str) -> Table:
    table = Table(title=caption)
    for header in headers:
        table.add_column(header, justify="left" if header == "method" else "right")
    for cells in body:
        table.add_row(*cells)
    return table


# ---- monitoring scores ------------------------------------------------------------------------------------------

SCORE_COLUMNS = [
    Column("model"), Column("version", rank=2), Column("score"), Column("value", "right"),
    Column("95% interval", "right", rank=3), Column("threshold", "right"), Column("", rank=0),
    Column("n", "right", rank=4), Column("how", rank=5),  # whole or left out: wrapped, it makes rows 10 lines high
]


def score_value(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if name == "answer_length" else f"{value:.3f}"


def score_tables(scores: list["Score"], kind: str, title: str, width: int = 200) -> tuple[Table | None, list[str]]:
    """The scores of one kind (drift, quality) as a table, FLAGGED where past their threshold; a model version
    none of whose scores could be computed is one line saying why instead of a row of dashes."""
    from rich.markup import escape

    mine = [score for score in scores if score.kind == kind]
    groups: dict[tuple, list] = {}
    for score in mine:
        groups.setdefault((score.model, score.version), []).append(score)
    rows, lines = [], []
    for (model, version), group in groups.items():
        if all(score.value is None for score in group) and len({score.detail for score in group}) == 1:
            lines.append(escape(f"{model} ({version_name(version)}): no {kind} scores: {group[0].detail}"))
            continue
        for score in group:
            if score.value is None and score.count == 0:  # nothing in the window to show: no row of dashes
                continue
            interval = (f"[{score_value(score.name, score.low)}, {score_value(score.name, score.high)}]"
                        if score.low is not None else "")
            threshold = "" if score.threshold is None else (("> " if score.flag_when == "above" else "< ")
                                                            + score_value(score.name, score.threshold))
            rows.append([model, version_name(version), score.name, score_value(score.name, score.value), interval,
                         threshold, "[bold red]FLAGGED[/bold red]" if score.flagged else "", f"{score.count:,}",
                         escape(score.detail)])
    return (fitted_table(title, SCORE_COLUMNS, rows, width) if rows else None), lines


def version_name(version: str | None) -> str:
    return "base" if version is None else Path(version).name
