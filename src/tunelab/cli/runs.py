"""Commands on finished runs that load no model: report, runs (list), runs compare."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer

from tunelab.cli.app import app, console

runs_app = typer.Typer(help="Runs and their key metric: list (default) and compare.", invoke_without_command=True)
app.add_typer(runs_app, name="runs")

DEFAULT_RUNS = Path("runs")


@app.command()
def report(run: Path = typer.Argument(..., help="Run folder.")) -> None:
    """Rebuild the run's report.html from its saved files (no model is loaded)."""
    from tunelab.evaluate.report import write_report
    from tunelab.runs import open_run

    path = write_report(open_run(run))
    console.print(f"written {path}")


@runs_app.callback()
def runs_default(context: typer.Context) -> None:
    """Without a subcommand: list the runs under ./runs."""
    if context.invoked_subcommand is None:
        show_runs(DEFAULT_RUNS)


@runs_app.command("list")
def runs_list(
    folder: Path = typer.Argument(DEFAULT_RUNS, help="A folder of runs (or one run)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per run instead of a table."),
) -> None:
    """List runs with their status, base model, method and headline metric base -> tuned."""
    show_runs(folder, as_json)


def shown(metric: str | None, value: float | None, signed: bool = False) -> str:
    from tunelab.evaluate.compare import format_delta, format_value

    if metric is None or value is None:
        return "-"
    return format_delta(metric, value) if signed else format_value(metric, value)


def show_runs(folder: Path, as_json: bool = False) -> None:
    import dataclasses
    import json

    from rich.table import Table

    from tunelab.errors import TunelabError
    from tunelab.evaluate.summary import find_runs, summarize_run

    if folder == DEFAULT_RUNS and not folder.is_dir():
        raise TunelabError(f"no {folder}/ folder here; `tunelab runs list FOLDER` lists the runs in another one")
    paths = find_runs(folder)
    if as_json:
        for path in paths:
            print(json.dumps(dataclasses.asdict(summarize_run(path)), default=str))
        return
    if not paths:
        console.print(f"no runs in {folder}")
        return
    table = Table(title=f"runs in {folder}")
    for column in ("run", "status", "model", "steps", "metric", "base", "tuned", "change", "forgetting",
                   "objective"):
        table.add_column(column, justify="right" if column in ("steps", "base", "tuned", "change") else "left",
                         overflow="fold")
    for path in paths:
        run = summarize_run(path)
        change = shown(run.primary, None if run.tuned is None else run.tuned - run.base, signed=True)
        objective = {None: "-", True: "[green]met[/green]", False: "[red]not met[/red]"}[run.verdict]
        forgetting = "-" if run.forgetting is None else f"{100 * run.forgetting:+.1f}%"
        model = Path(run.model).name if run.model else "-"
        table.add_row(str(path), run.status + (f" ({run.note})" if run.note else ""),
                      f"{model} {run.method or ''}".strip(), str(run.steps or "-"), run.primary or "not evaluated",
                      shown(run.primary, run.base), shown(run.primary, run.tuned), change, forgetting, objective)
    console.print(table)


@runs_app.command("compare")
def runs_compare(
    first: Path = typer.Argument(..., help="Run A."),
    second: Path = typer.Argument(..., help="Run B."),
) -> None:
    """Two runs side by side: recipe differences, tuned metrics A vs B (with a paired interval of B - A when both
    were evaluated on the same test rows), training facts."""
    from rich.table import Table

    from tunelab.evaluate.summary import compare_runs

    comparison = compare_runs(first, second)
    metrics = Table(title=f"tuned metrics: A = {first}, B = {second}")
    for column in ("metric", "A", "B", "B - A"):
        metrics.add_column(column, justify="left" if column == "metric" else "right")
    for row in comparison["metrics"]:
        difference = shown(row["metric"], row["difference"], signed=True)
        if row["interval"]:
            low, high = row["interval"]
            difference += f" [{shown(row['metric'], low, True)}, {shown(row['metric'], high, True)}]"
        metrics.add_row(row["metric"], shown(row["metric"], row["a"]), shown(row["metric"], row["b"]), difference)
    console.print(metrics)
    if not comparison["same_test_rows"]:
        console.print("[yellow]the runs were evaluated on different test rows: differences are not like for like"
                      "[/yellow]")
    facts = Table(title="runs")
    for column in ("", "A", "B"):
        facts.add_column(column)
    for key, a, b in comparison["facts"]:
        facts.add_row(key, fact(a), fact(b))
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


def fact(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return str(value)
