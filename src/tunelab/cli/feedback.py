"""`tunelab feedback export SERVE_DIR`: feedback given on a served model's answers, as SFT, DPO or KTO rows."""

from __future__ import annotations

from pathlib import Path

import typer

from tunelab.cli.app import Command, app, console, group

feedback_app = group(help="Feedback clients gave on served answers (POST /v1/feedback), as training data.",
                     no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")


@feedback_app.command("export", cls=Command)
def export(
    serve_dir: Path = typer.Argument(..., help="The folder `tunelab serve --serve-dir` wrote its request log to."),
    model: str = typer.Option(..., "--model", help="The served model id whose answers were judged."),
    fmt: str = typer.Option(..., "--format", help="sft (corrections as conversations), dpo (correction chosen, "
                            "original rejected) or kto (thumbs as labelled answers)."),
    out: Path = typer.Option(..., "--out", help="The JSONL file to write."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    """Training rows from feedback, through the data doctor: personal data scrubbed, duplicates dropped, rows
    found in the serving run's test split dropped."""
    from tunelab.monitor.feedback_export import export_feedback
    from tunelab.present.console import feedback_export_line

    result = export_feedback(serve_dir, model, fmt, out, overwrite)
    console.print(feedback_export_line(result, model, fmt, out), soft_wrap=True)
