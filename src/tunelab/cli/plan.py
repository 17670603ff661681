"""`tunelab plan`: what a run will cost before it runs."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Optional

import typer

from tunelab.cli.app import OVERRIDES, Command, app, console, device_option
from tunelab.paths import tunelab_home
from tunelab.quiet import quiet_libraries

MEMORY_BUDGET_HELP = "Memory the run may use per device, e.g. 2GiB or 1500MB (default: what is available now)."


def memory_budget_option() -> Optional[str]:
    return typer.Option(None, "--memory-budget", metavar="SIZE", help=MEMORY_BUDGET_HELP)


@app.command(cls=Command)
def plan(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    overrides: Optional[list[str]] = typer.Argument(None, metavar=OVERRIDES,
        help="Dotted overrides, e.g. train.batch_size=4"),
    calibrate: bool = typer.Option(False, "--calibrate/--no-calibrate",
                                   help="Time 3 training steps here (loads the model) to estimate the run's time."),
    peak_gflops: Optional[float] = typer.Option(None, "--peak-gflops", min=0.001, metavar="X",
                                                help="Estimate the time from this peak GFLOP/s instead."),
    memory_budget: Optional[str] = memory_budget_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    device: str = device_option(),
) -> None:
    """Parameters, data, memory per device and time of a recipe's run, before any training. Writes nothing."""
    from rich.console import Console

    from tunelab.config.load import load_recipe
    from tunelab.plan.estimate import make_plan, plan_setup, with_time
    from tunelab.plan.fit import parse_size
    from tunelab.plan.report import plan_json, print_plan

    config = load_recipe(recipe, overrides or [])
    budget = parse_size(memory_budget) if memory_budget else None
    quiet_libraries()
    # with --json, stdout is the JSON alone: what libraries print while the plan is made goes to stderr
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        setup = plan_setup(config, tunelab_home(), Console(stderr=True, quiet=as_json), device)
        made = with_time(make_plan(setup), setup, calibrate, peak_gflops)
    if as_json:
        typer.echo(json.dumps(plan_json(made, budget), indent=2))
    else:
        print_plan(console, made, budget)
