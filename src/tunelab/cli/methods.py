"""`tunelab methods` and `tunelab tasks` (what a recipe can name) and `tunelab compare-methods` (the trade-off on
your data)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from tunelab.cli.app import OVERRIDES, Command, app, console, device_option
from tunelab.errors import TunelabError
from tunelab.paths import tunelab_home

ALL_METHODS = "lora,dora,qlora,prefix,prompt,ia3,adapter,full"


@app.command("methods", cls=Command)
def methods_list() -> None:
    """The tuning methods a recipe's method.name can name, with what each declares."""
    from rich.table import Table

    from tunelab.methods.registry import METHODS

    table = Table(title="tuning methods (method.name)")
    for column in ("name", "merge", "padding-free", "typical lr", "summary"):
        table.add_column(column)
    for method in METHODS.values():
        merge = "yes" if method.merge is not None and method.is_adapter else "no" if method.is_adapter else "n/a"
        table.add_row(method.name, merge, "yes" if method.padding_free else "no", f"{method.typical_lr:g}",
                      method.summary)
    console.print(table)


@app.command("tasks", cls=Command)
def tasks_list() -> None:
    """The training tasks a recipe's task (or task.name) can name, with the rows each trains on."""
    from rich.table import Table

    from tunelab.tasks.registry import TASKS

    table = Table(title="training tasks (task.name)")
    for column in ("name", "rows", "options", "summary"):
        table.add_column(column)
    for task in TASKS.values():
        options = ", ".join(name for name in task.config_class.model_fields if name != "name") or "-"
        table.add_row(task.name, ", ".join(task.row_kinds), options, task.summary)
    console.print(table)


@app.command("compare-methods", cls=Command)
def compare_methods_command(
    recipe: Path = typer.Argument(..., help="Recipe YAML file: its data, model and settings serve every method."),
    overrides: Optional[list[str]] = typer.Argument(None, metavar=OVERRIDES,
        help="Dotted overrides, e.g. data.generate.rows=200"),
    methods: str = typer.Option(ALL_METHODS, help="Comma-separated methods."),
    steps: int = typer.Option(30, min=1, help="Optimizer steps per method (the same budget for all)."),
    out: Optional[Path] = typer.Option(None, help="Folder for the runs and the table; default runs/<recipe>-methods."),
    eval_rows: Optional[int] = typer.Option(None, min=1, help="Evaluate on at most this many test rows."),
    same_lr: bool = typer.Option(False, "--same-lr", help="Train every method at the recipe's train.lr."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier comparison in the output folder."),
    device: str = device_option(),
) -> None:
    """Train each method with the same data and step budget, evaluate it and the base model, write the table."""
    from tunelab.compare_methods import Plan, compare_methods, table_rows, write_results
    from tunelab.config.load import load_recipe
    from tunelab.device import resolve_device
    from tunelab.methods.registry import get_method
    from tunelab.present.console import simple_table

    config = load_recipe(recipe, overrides or [])
    names = [name.strip() for name in methods.split(",") if name.strip()]
    for name in names:
        get_method(name)  # an unknown name stops here, before any training
    if not names or len(set(names)) != len(names) or "base" in names:
        raise TunelabError(f"--methods: give distinct method names ('{methods}'); the base model is always included")
    folder = out or Path("runs") / f"{recipe.stem}-methods"
    if (folder / "methods.json").exists() and not overwrite:
        raise TunelabError(f"{folder}: already holds a comparison; use --overwrite to replace it or --out elsewhere")
    if folder.exists() and any(folder.iterdir()) and not (folder / "methods.json").exists() and not overwrite:
        raise TunelabError(f"{folder}: exists and is not a comparison folder; choose another --out")
    plan = Plan(config.model_dump(mode="json"), names, steps, folder, same_lr, eval_rows, resolve_device(device))
    started = time.perf_counter()
    rows = compare_methods(plan, tunelab_home(), lambda line: console.print(line, markup=False))
    caption = (f"{config.model.name}, task {config.task.name}, {steps} steps of batch {config.train.batch_size} per "
               f"method, {'the recipe lr' if same_lr else 'each method at its typical lr'}; "
               f"{time.perf_counter() - started:.0f} s in all")
    json_path, markdown_path = write_results(plan, rows, caption)
    console.print(simple_table(*table_rows(rows), caption))
    console.print(f"[dim]written {markdown_path} and {json_path}[/dim]")

