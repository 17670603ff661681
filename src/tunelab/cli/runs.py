"""Commands on finished runs that load no model: report, runs (list), runs compare."""

from __future__ import annotations

from pathlib import Path

import typer

from tunelab.cli.app import Command, app, console, group

runs_app = group(help="Runs and their key metric: list (default) and compare.", invoke_without_command=True)
app.add_typer(runs_app, name="runs")

DEFAULT_RUNS = Path("runs")


@app.command(cls=Command)
def report(run: Path = typer.Argument(..., help="Run folder.")) -> None:
    """Rebuild the run's report.html from its saved files (no model is loaded)."""
    from tunelab.present.eval_report import write_report
    from tunelab.run.record import open_run

    path = write_report(open_run(run)[0])
    console.print(f"written {path}")


@runs_app.callback()
def runs_default(context: typer.Context) -> None:
    """Without a subcommand: list the runs under ./runs."""
    if context.invoked_subcommand is None:
        show_runs(DEFAULT_RUNS)


@runs_app.command("list", cls=Command)
def runs_list(
    folder: Path = typer.Argument(DEFAULT_RUNS, help="A folder of runs (or one run)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per run instead of a table."),
) -> None:
    """List runs with their status, task, base model, method and headline metric base -> tuned."""
    show_runs(folder, as_json)


def show_runs(folder: Path, as_json: bool = False) -> None:
    import dataclasses
    import json

    from tunelab.errors import TunelabError
    from tunelab.present.console import runs_table
    from tunelab.run.listing import find_runs, summarize_run

    if folder == DEFAULT_RUNS and not folder.is_dir():
        raise TunelabError(f"no {folder}/ folder here; `tunelab runs list FOLDER` lists the runs in another one")
    runs = [summarize_run(path) for path in find_runs(folder)]
    if as_json:
        for run in runs:
            print(json.dumps(dataclasses.asdict(run), default=str))
        return
    if not runs:
        console.print(f"no runs in {folder}")
        return
    console.print(runs_table(folder, runs, console.width))


@runs_app.command("compare", cls=Command)
def runs_compare(
    first: Path = typer.Argument(..., help="Run A."),
    second: Path = typer.Argument(..., help="Run B."),
) -> None:
    """Two runs side by side: recipe differences, tuned metrics A vs B (with a paired interval of B - A when both
    were evaluated on the same test rows), training facts."""
    from tunelab.present.console import print_run_comparison
    from tunelab.run.listing import compare_runs

    print_run_comparison(console, compare_runs(first, second), first, second)
