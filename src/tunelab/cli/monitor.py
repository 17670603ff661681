"""`tunelab monitor SERVE_DIR`: what the server's request log says about each model over a time window."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tunelab.cli.app import Command, app, console


@app.command(cls=Command)
def monitor(
    serve_dir: Path = typer.Argument(..., help="The folder `tunelab serve --serve-dir` wrote its request log to."),
    since: str = typer.Option("1h", help="Time window back from now: 30s, 15m, 1h, 7d."),
    threshold: Optional[list[str]] = typer.Option(
        None, "--threshold", metavar="NAME=VALUE", help="A score's threshold (repeatable), over the served run's "
                                                        "recipe (monitor.thresholds) and the defaults."),
    embeddings: bool = typer.Option(True, "--embeddings/--no-embeddings",
                                    help="Compute embedding_distance with MiniLM (a few seconds)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Latency percentiles, error rate and volume per model (chat and completions requests), then each model's
    drift (live prompts against its run's training data; needs `serve --log-content`) and live quality (feedback,
    errors, refusals, answer length), FLAGGED past their thresholds."""
    from tunelab.monitor.report import all_scores, parse_window, summarize
    from tunelab.monitor.thresholds import layered, parse_threshold_options

    window = parse_window(since)
    options = parse_threshold_options(threshold or [], "--threshold")
    stats = summarize(serve_dir, window)
    embedder = None
    if embeddings and stats:
        from tunelab.monitor.drift import Embedder
        from tunelab.paths import tunelab_home
        from tunelab.quiet import quiet_libraries

        quiet_libraries()
        embedder = Embedder(tunelab_home())
    scores = all_scores(serve_dir, window, layered(options), embedder=embedder) if stats else []
    if as_json:
        print_json(since, window, stats, scores)
        return
    if not stats:
        console.print(f"no requests in the last {since}")
        return
    from tunelab.present.console import monitor_table, score_tables

    console.print(monitor_table(f"requests in the last {since} ({serve_dir})", stats, console.width))
    for kind in ("drift", "quality"):
        table, lines = score_tables(scores, kind, f"{kind} in the last {since}", console.width)
        if table is not None:
            console.print(table)
        for line in lines:
            console.print(line)


def print_json(since: str, window: float, stats: list, scores: list) -> None:
    import json
    from dataclasses import asdict

    document = {"since": since, "window_s": window, "models": [asdict(item) for item in stats],
                "scores": [{**asdict(score), "flagged": score.flagged} for score in scores]}
    typer.echo(json.dumps(document, indent=2))
