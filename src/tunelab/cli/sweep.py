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
    recipe: Path = typer.Argument(..., help="Recipe YAML file: the starting point (trial 0) and everything not searched."),
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
