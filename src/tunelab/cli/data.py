"""`tunelab data ...`: check a data set (the data doctor) and prepare it into a run folder before training."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

import typer

from tunelab.cli.app import OVERRIDES, Command, app, console, group
from tunelab.errors import TunelabError
from tunelab.files import copy_file
from tunelab.paths import tunelab_home
from tunelab.quiet import quiet_libraries

data_app = group(help="Check, clean and prepare data before any training time is spent.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")

RECIPE_SUFFIXES = (".yaml", ".yml")
CHECK_FILES = ("data_report.html", "data_report.json", "rejected.jsonl")


def recipe_or_file(target: Path, overrides: list[str], model: str | None) -> tuple[Any, str]:
    """A recipe file, or a data file checked with default settings (and the overrides); and a name for it."""
    from tunelab.config.load import apply_overrides, load_recipe, validate_recipe

    if target.suffix.lower() in RECIPE_SUFFIXES:
        if model:
            overrides = [*overrides, f"model.name={model}"]
        return load_recipe(target, overrides), target.stem
    if not target.is_file():
        raise TunelabError(f"{target}: no such recipe or data file")
    raw: dict[str, Any] = {"data": {"train": str(target)}, "model": {}}
    if model:
        raw["model"]["name"] = model
    overridden = apply_overrides(raw, overrides)
    return validate_recipe(raw, source="command line", overridden=overridden), target.stem


def model_limits(recipe: Any, home: Path) -> tuple[Any, set[int], int | None]:
    """The recipe model's tokenizer (with the recipe's chat template), stop ids and context size, without
    loading its weights."""
    from tunelab.data.templates import resolve_chat_template
    from tunelab.models.load import model_limits as limits_of
    from tunelab.models.tokenizer import load_tokenizer
    from tunelab.run.chain import chained_recipe, recipe_base

    # The model training will start from: a chained recipe's (model.from_run) tokenizer is its starting run's.
    ref, _ = recipe_base(chained_recipe(recipe, home), home, console)
    tokenizer = load_tokenizer(ref.path, resolve_chat_template(recipe.model.chat_template))
    limits = limits_of(ref.path, tokenizer)
    return tokenizer, limits.stop_ids, limits.context


def run_doctor(recipe: Any, check: bool):
    from tunelab.data.cache import prepare_data
    from tunelab.present.progress import StageProgress

    home = tunelab_home()
    tokenizer, stop_ids, context = model_limits(recipe, home)
    with StageProgress() as progress:
        return prepare_data(recipe.data, tokenizer, stop_ids, context, home, check=check, progress=progress)


def show(prepared: Any) -> None:
    from tunelab.present.console import print_data_report

    print_data_report(console, prepared.report)
    timing = prepared.report["timing"]
    how = "cache hit: no work done" if prepared.from_cache else (
        f"{timing['rows_per_second']:,} rows/s with {timing['workers']} process(es)")
    console.print(f"[dim]{how}; key {prepared.key[:16]}[/dim]")


@data_app.command("check", cls=Command)
def check(
    target: Path = typer.Argument(..., help="Recipe YAML file, or a data file (checked with default settings)."),
    overrides: Optional[list[str]] = typer.Argument(None, metavar=OVERRIDES,
        help="Dotted overrides, e.g. data.file_type=tsv"),
    model: Optional[str] = typer.Option(None, help="Model whose tokenizer and template are used (default: the "
                                        "recipe's, or the built-in model)."),
    out: Optional[Path] = typer.Option(None, help="Folder for data_report.html/.json and rejected.jsonl "
                                       "(default: data_check/<name>)."),
) -> None:
    """Report every problem in a data set: bad rows, duplicates, contamination, personal data, lengths, template.

    Exits with 2 on anything `tunelab train` would refuse: a row it cannot read (with data.bad_rows: stop), nothing
    left, one class only, a template lint failure, rows the recipe's task does not train on.
    """
    recipe, name = recipe_or_file(target, overrides or [], model)
    quiet_libraries()
    prepared = run_doctor(recipe, check=True)
    show(prepared)
    folder = out or Path("data_check") / name
    write_check(prepared, folder)
    console.print(f"[bold]written[/bold] {folder / 'data_report.html'}, data_report.json, rejected.jsonl")
    refuse_what_train_refuses(recipe, prepared, target)


def refuse_what_train_refuses(recipe: Any, prepared: Any, target: Path) -> None:
    """Exit 2 on what `tunelab train` would refuse in this data (the same checks, not a copy), so a CI step running
    `tunelab data check` fails exactly when training would. Row kinds are checked against a recipe's task only: a
    bare data file names no task."""
    from tunelab.data.cache import refusals
    from tunelab.tasks.base import check_row_kinds
    from tunelab.tasks.registry import get_task

    found = refusals(prepared, recipe.data)
    if not found and target.suffix.lower() in RECIPE_SUFFIXES:
        check_row_kinds(get_task(recipe.task.name), prepared.report["splits"]["train"]["kinds"],
                        recipe.data.train or "data")
    if found:
        more = f" (and {len(found) - 1} more problem(s); see rejected.jsonl)" if len(found) > 1 else ""
        raise TunelabError(f"data not usable as it is: {found[0]}{more}")


def write_check(prepared: Any, folder: Path) -> None:
    if folder.exists() and any(p.name not in CHECK_FILES for p in folder.iterdir()):
        raise TunelabError(f"{folder}: holds other files than a data check's; choose another --out")
    folder.mkdir(parents=True, exist_ok=True)
    for name in CHECK_FILES:
        copy_file(prepared.folder / name, folder / name)


@data_app.command("prepare", cls=Command)
def prepare(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE", help="Recipe YAML file."),
    overrides: Optional[list[str]] = typer.Argument(None, metavar=OVERRIDES,
        help="Dotted overrides, e.g. data.dedup.threshold=0.9"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a run already in output.dir."),
) -> None:
    """Clean, deduplicate and check the recipe's data and write the splits to <output.dir>/data, which
    `tunelab train` then uses (from the cache: no work is done twice)."""
    from tunelab.config.load import load_recipe
    from tunelab.run.folder import RunDir

    recipe = load_recipe(recipe_path, overrides or [])
    run = RunDir(Path(recipe.output.dir))
    check_prepare_target(run, overwrite)
    quiet_libraries()
    prepared = run_doctor(recipe, check=False)
    show(prepared)
    if run.is_run():
        shutil.rmtree(run.root)
    prepared.copy_to(run.data)
    console.print(f"[bold green]prepared[/bold green] {run.data} (train.jsonl, validation.jsonl, test.jsonl, "
                  f"rejected.jsonl, data_report.html); `tunelab train {recipe_path}` uses it")


def check_prepare_target(run: Any, overwrite: bool) -> None:
    root = run.root
    if not root.exists() or not any(root.iterdir()) or run.is_prepared_only():
        return
    if not run.is_run():
        raise TunelabError(f"{root}: exists and is not a tunelab run; choose another output.dir")
    if not overwrite:
        raise TunelabError(f"{root}: already holds a run; use --overwrite to replace it with freshly prepared data")
