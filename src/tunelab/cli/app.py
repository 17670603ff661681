"""The typer application, the shared consoles and helpers every command module uses."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console

app = typer.Typer(
    name="tunelab",
    help="From a data file to a measurably better fine-tuned model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

console = Console(highlight=False)
error_console = Console(stderr=True, highlight=False)


@app.callback()
def root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    """tunelab: train, evaluate and use fine-tuned language models."""


# `--device` of every command that runs a model (see device.py).
DEVICE_HELP = "Where models run: auto (a CUDA GPU when there is one, else the CPU), cpu or cuda."


def device_option() -> Any:
    return typer.Option("auto", "--device", help=DEVICE_HELP)
