"""The typer application, the shared consoles and helpers every command module uses."""

from __future__ import annotations

import os
import warnings

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


def quiet_libraries() -> None:
    """Keep the libraries' own progress bars and info logs out of tunelab's output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Deprecation notices from inside the libraries are for tunelab's developers, not its users.
    warnings.filterwarnings("ignore", category=FutureWarning)
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


