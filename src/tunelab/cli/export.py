"""`tunelab export RUN --format merged|adapter|gguf`: a run into a folder that transformers, peft or llama.cpp load."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tunelab.cli.app import Command, app, console, device_option
from tunelab.paths import tunelab_home
from tunelab.quiet import quiet_libraries


@app.command(cls=Command)
def export(
    run: Path = typer.Argument(..., help="Run folder."),
    format: str = typer.Option(..., "--format", "-f", help="merged (safetensors), adapter (PEFT's format) or gguf."),
    dtype: Optional[str] = typer.Option(
        None, help="f32 or bf16 weights; default f32 for merged and gguf, as trained for adapter."
    ),
    quant: Optional[str] = typer.Option(None, help="GGUF quantization of the weight matrices: q8_0."),
    out: Optional[Path] = typer.Option(None, help="Destination folder; default RUN/export/<format>[-<dtype|quant>]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty destination folder."),
    verify: bool = typer.Option(
        True, "--verify/--no-verify", help="Load the export back and compare its answers with the run's model."
    ),
    device: str = device_option(),
) -> None:
    """Export a run's model, with a model card (README.md) built from the run's record."""
    from tunelab.export.exporter import ExportOptions, check_options

    options = ExportOptions(format=format, dtype=dtype, quant=quant, out=out, overwrite=overwrite, verify=verify)
    check_options(options)
    quiet_libraries()
    from tunelab.export.exporter import export_run
    from tunelab.present.progress import StageProgress

    with StageProgress() as progress:
        exported = export_run(run, options, tunelab_home(), say=lambda text: console.print(f"[dim]{text}[/dim]"),
                              device=device, progress=progress)
    size = sum(path.stat().st_size for path in exported.folder.iterdir() if path.is_file())
    console.print(f"[bold green]exported[/bold green] {format} to {exported.folder} ({size / 1e6:.1f} MB)")
