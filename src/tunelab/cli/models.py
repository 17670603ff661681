"""`tunelab models ...`: the built-in base models."""

from __future__ import annotations

import typer

from tunelab.cli.app import app, console, quiet_libraries
from tunelab.errors import TunelabError
from tunelab.paths import tunelab_home

models_app = typer.Typer(help="Built-in base models: list and pull.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list() -> None:
    """Built-in models and whether they are ready in the cache."""
    from rich.table import Table

    from tunelab.models.builtin import model_dir
    from tunelab.models.catalog import BUILTIN_MODELS
    from tunelab.models.convert import is_converted
    from tunelab.models.packaged import PACKAGED_CHECKPOINTS, find_folder

    home = tunelab_home()
    table = Table(title=f"built-in models (cache: {home / 'models'})")
    for column in ("name", "status", "description"):
        table.add_column(column)
    for model in BUILTIN_MODELS.values():
        status = "ready" if is_converted(model_dir(model, home)) else "not pulled (pulled on first use)"
        table.add_row(model.name, status, model.description)
    for checkpoint in PACKAGED_CHECKPOINTS.values():
        status = "ready" if find_folder(checkpoint) else f"installed on first use ({checkpoint.package})"
        table.add_row(checkpoint.name, status, checkpoint.description)
    console.print(table)
    console.print("A recipe's model.name may also be a local Hugging Face checkpoint folder or a .gguf file.")


@models_app.command("pull")
def models_pull(
    name: str = typer.Argument(..., help="Built-in model name."),
    verify: bool = typer.Option(False, "--verify", help="Re-check the cached files' sha256 against the manifest."),
) -> None:
    """Install, convert and verify a built-in model (done automatically on first use)."""
    quiet_libraries()
    from tunelab.models.builtin import pull
    from tunelab.models.catalog import BUILTIN_MODELS
    from tunelab.models.convert import read_manifest, verify_files

    if name not in BUILTIN_MODELS:
        raise TunelabError(f"unknown built-in model '{name}' (available: {', '.join(BUILTIN_MODELS)})")
    folder = pull(BUILTIN_MODELS[name], tunelab_home(), console=console)
    if verify:
        damaged = verify_files(folder)
        if damaged:
            raise TunelabError(f"{folder}: files changed since conversion: {', '.join(damaged)}; delete the folder")
    manifest = read_manifest(folder)
    console.print(f"[bold green]ready[/bold green] {name}: {folder} (verified greedy output: "
                  f"{manifest['check']['greedy_text']!r})")
