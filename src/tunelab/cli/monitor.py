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
    from rich.table import Table

    from tunelab.monitor.report import parse_window, summarize

    window = parse_window(since)
    stats = summarize(serve_dir, window)
    if not stats:
        console.print(f"no requests in the last {since}")
        return
    table = Table(title=f"requests in the last {since} ({serve_dir})")
    for column in ("model", "requests", "errors", "error rate", "p50 ms", "p95 ms", "p99 ms", "prompt tok",
                   "completion tok", "tok/s per request"):
        table.add_column(column, justify="left" if column == "model" else "right")

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    for item in stats:
        table.add_row(item.model, str(item.requests), str(item.errors), f"{100 * item.error_rate:.1f}%",
                      ms(item.p50_ms), ms(item.p95_ms), ms(item.p99_ms), f"{item.prompt_tokens:,}",
                      f"{item.completion_tokens:,}",
                      "-" if item.tokens_per_second is None else f"{item.tokens_per_second:.1f}")
    console.print(table)
