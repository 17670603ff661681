"""`tunelab monitor SERVE_DIR`: what the server's request log says about each model over a time window."""

from __future__ import annotations

from pathlib import Path

import typer

from tunelab.cli.app import Command, app, console


@app.command(cls=Command)
def monitor(
    serve_dir: Path = typer.Argument(..., help="The folder `tunelab serve --serve-dir` wrote its request log to."),
    since: str = typer.Option("1h", help="Time window back from now: 30s, 15m, 1h, 7d."),
) -> None:
    """Latency percentiles, error rate and volume per model (chat and completions requests)."""
    from tunelab.monitor.report import parse_window, summarize
    from tunelab.present.console import monitor_table

    window = parse_window(since)
    stats = summarize(serve_dir, window)
    if not stats:
        console.print(f"no requests in the last {since}")
        return
    console.print(monitor_table(f"requests in the last {since} ({serve_dir})", stats, console.width))
