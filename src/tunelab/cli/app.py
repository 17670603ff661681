"""The typer application, the shared consoles and helpers every command module uses."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

import tunelab

console = Console(highlight=False)
error_console = Console(stderr=True, highlight=False)


# ---- help that reads like a command line ---------------------------------------------------------------------------
# typer 0.29 prints each parameter's Python type in --help (`--resume <bool>`, `OVERRIDES... <list[str]>`) and has
# no setting to leave it out. A flag takes no value, so it shows none; an argument shows its name (its metavar,
# e.g. KEY=VALUE...), which already says what to give. Every command and group is built with these classes
# (`cls=Command`, `cls=Group`); tests/unit/test_cli_edges.py reads the help of each.


class Argument(TyperArgument):
    def display_type_rich(self, ctx: Any) -> str | None:
        return None


def readable_params(params: list[Any]) -> None:
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag:
            param.metavar = ""  # typer shows an option's metavar in place of its type
        elif type(param) is TyperArgument:
            param.__class__ = Argument  # the one way to change how typer shows an argument it built


class ReadableHelp:
    """Mixed into typer's command and group classes: flags and arguments shown as above, --help with no value."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        readable_params(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class Command(ReadableHelp, TyperCommand):
    pass


class Group(ReadableHelp, TyperGroup):
    pass


def group(**options: Any) -> typer.Typer:
    """A command group with tunelab's help (see above)."""
    return typer.Typer(cls=Group, rich_markup_mode="rich", **options)


app = group(
    name="tunelab",
    help="From a data file to a measurably better fine-tuned model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def show_version(value: bool) -> None:
    if value:
        typer.echo(f"tunelab {tunelab.__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors (anywhere on the line)."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=show_version,
                                 help="Print tunelab's version and exit."),
) -> None:
    """tunelab: train, evaluate and use fine-tuned language models."""


# `--device` of every command that runs a model (see device.py).
DEVICE_HELP = "Where models run: auto (a CUDA GPU when there is one, else the CPU), cpu or cuda."

# The dotted `section.key=value` overrides several commands take after their first argument.
OVERRIDES = "KEY=VALUE"


def device_option() -> Any:
    return typer.Option("auto", "--device", help=DEVICE_HELP)
