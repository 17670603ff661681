"""`tunelab sweep` (search a recipe's hyperparameters) and `tunelab compare-models` (one recipe, several base
models: the smallest that meets your needs)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from tunelab.cli.app import OVERRIDES, Command, app, console, device_option
from tunelab.errors import TunelabError
from tunelab.paths import tunelab_home


@app.command("sweep", cls=Command)
def sweep_command(
    recipe: Path = typer.Argument(..., help="Recipe YAML file: the starting point (trial 0) and all not searched."),
    overrides: Optional[list[str]] = typer.Argument(None, metavar=OVERRIDES,
        help="Dotted overrides, e.g. train.max_steps=40"),
    space: Path = typer.Option(..., "--space", help="Space YAML: dotted recipe keys -> {type, low, high, log, step, "
                               "choices}."),
    trials: int = typer.Option(..., "--trials", min=1, help="Trials in all (a resumed sweep counts the earlier ones)."),
    folder: Optional[Path] = typer.Option(None, "--dir", help="Sweep folder (study.db, trials/, sweep.html); "
                                          "default runs/<recipe>-sweep."),
    seed: int = typer.Option(0, "--seed", help="Seed of the TPE sampler."),
    prune_after: int = typer.Option(2, "--prune-after", min=0,
                                    help="Finished trials before the median pruner starts comparing."),
    device: str = device_option(),
) -> None:
    """Search hyperparameters with Optuna (TPE, median pruning on validation loss); each trial a run folder; the
    best trial evaluated on the test rows once, at the end; writes sweep.html, sweep.json and best.yaml."""
    import optuna

    from tunelab.config.load import load_recipe
    from tunelab.device import resolve_device
    from tunelab.present.console import simple_table
    from tunelab.quiet import quiet_libraries
    from tunelab.sweep.report import table, write_outputs
    from tunelab.sweep.space import load_space
    from tunelab.sweep.study import SweepPlan, objective_of, run_sweep, test_of_best

    quiet_libraries()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours; Optuna's repeat it
    config = load_recipe(recipe, overrides or [])
    data = config.model_dump(mode="json")
    plan = SweepPlan(data, load_space(space, data), trials, folder or Path("runs") / f"{recipe.stem}-sweep", seed,
                     resolve_device(device), prune_after)
    say = lambda line: console.print(line, markup=False)  # noqa: E731
    started = time.perf_counter()
    study = run_sweep(plan, tunelab_home(), say)
    test = test_of_best(study, plan, tunelab_home(), say)
    result = write_outputs(plan, study, objective_of(config).metric, test, time.perf_counter() - started)
    console.print(simple_table(*table(result), f"sweep of {recipe.name}: {result['metric']} on the validation rows"))
    if result["best"] is None:
        raise TunelabError(f"sweep: no trial finished; see {plan.folder / 'sweep.json'} for each trial's error")
    if test:
        primary = test["primary_metric"]
        console.print(f"best trial {test['trial']} on the {test['rows']} test rows: {primary} "
                      f"{test['tuned'][primary]:.4f} (base {test['base'][primary]:.4f})")
    console.print(f"[dim]written {plan.folder / 'sweep.html'}, {plan.folder / 'sweep.json'}, "
                  f"{plan.folder / 'best.yaml'}[/dim]")


@app.command("compare-models", cls=Command)
def compare_models_command(
    recipe: Path = typer.Argument(..., help="Recipe YAML file: its data, method and settings serve every model."),
    overrides: Optional[list[str]] = typer.Argument(None, metavar=OVERRIDES,
        help="Dotted overrides, e.g. train.max_steps=40"),
    models: str = typer.Option(..., "--models", help="Comma-separated base models: built-in names or checkpoint "
                               "folders."),
    steps: Optional[int] = typer.Option(None, min=1, help="Optimizer steps per model; default: the recipe's."),
    out: Optional[Path] = typer.Option(None, help="Folder for the runs and the table; default runs/<recipe>-models."),
    eval_rows: Optional[int] = typer.Option(None, min=1, help="Evaluate on at most this many test rows."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier comparison in the output folder."),
    device: str = device_option(),
) -> None:
    """Train and evaluate the same recipe on each base model; the table and the smallest model that meets your
    needs (the recipe's objective)."""
    from tunelab.compare_models import ModelsPlan, check_model_name, compare_models, table_rows, write_results
    from tunelab.config.load import load_recipe
    from tunelab.device import resolve_device
    from tunelab.present.console import simple_table

    config = load_recipe(recipe, overrides or [])
    names = [name.strip() for name in models.split(",") if name.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise TunelabError(f"--models: give two or more distinct models ('{models}')")
    if config.model.from_run:
        raise TunelabError("compare-models: the recipe sets model.from_run; compare base models, not a chain")
    for name in names:
        check_model_name(name)
    folder = out or Path("runs") / f"{recipe.stem}-models"
    if (folder / "models.json").exists() and not overwrite:
        raise TunelabError(f"{folder}: already holds a comparison; use --overwrite to replace it or --out elsewhere")
    if folder.exists() and any(folder.iterdir()) and not (folder / "models.json").exists() and not overwrite:
        raise TunelabError(f"{folder}: exists and is not a comparison folder; choose another --out")
    plan = ModelsPlan(config.model_dump(mode="json"), names, folder, steps, eval_rows, resolve_device(device))
    started = time.perf_counter()
    rows = compare_models(plan, tunelab_home(), lambda line: console.print(line, markup=False))
    schedule = f"{steps} steps" if steps else "the recipe's schedule"
    caption = (f"task {config.task.name}, method {config.method.name}, {schedule} of batch "
               f"{config.train.batch_size} per model; {time.perf_counter() - started:.0f} s in all")
    json_path, markdown_path, verdict = write_results(plan, rows, caption)
    console.print(simple_table(*table_rows(rows), caption))
    console.print(f"[bold]{verdict}[/bold]", markup=True, highlight=False)
    console.print(f"[dim]written {markdown_path} and {json_path}[/dim]")
