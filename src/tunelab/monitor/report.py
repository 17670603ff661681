"""`tunelab monitor`: latency percentiles, error rate and volume per model over a time window of the request log,
and every model's drift and quality scores over it."""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.errors import TunelabError
from tunelab.monitor.requestlog import database_path

if TYPE_CHECKING:
    from tunelab.monitor.scores import Score

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass
class ModelStats:
    model: str
    requests: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    tokens_per_second: float | None  # completion tokens over the summed latency of successful requests

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def parse_window(text: str, option: str = "--since") -> float:
    """'90s', '15m', '1h', '7d' -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise TunelabError(f"{option} '{text}': give a number above 0 and a unit, e.g. 30m, 1h, 7d")
    return float(match.group(1)) * UNITS[match.group(2)]


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return None
    position = (len(sorted_values) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def summarize(serve_dir: Path, since_seconds: float, now: float | None = None) -> list[ModelStats]:
    path = database_path(serve_dir)
    if not path.is_file():
        raise TunelabError(f"{serve_dir}: no request log here ({path.name}); is it the folder `tunelab serve` used?")
    start = (now or time.time()) - since_seconds
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = connection.execute(
            "SELECT COALESCE(model, '(none)'), status, latency_ms, COALESCE(prompt_tokens, 0), "
            "COALESCE(completion_tokens, 0) FROM requests WHERE ts >= ? AND endpoint IN "
            "('/v1/chat/completions', '/v1/completions') ORDER BY model", (start,)).fetchall()
    finally:
        connection.close()
    by_model: dict[str, list[tuple]] = {}
    for row in rows:
        by_model.setdefault(row[0], []).append(row)
    return [model_stats(model, entries) for model, entries in by_model.items()]


def model_stats(model: str, entries: list[tuple]) -> ModelStats:
    ok = [entry for entry in entries if entry[1] < 400]
    latencies = sorted(entry[2] for entry in ok)
    completion = sum(entry[4] for entry in ok)
    busy = sum(latencies) / 1000
    return ModelStats(
        model=model, requests=len(entries), errors=len(entries) - len(ok),
        p50_ms=percentile(latencies, 0.50), p95_ms=percentile(latencies, 0.95), p99_ms=percentile(latencies, 0.99),
        prompt_tokens=sum(entry[3] for entry in ok), completion_tokens=completion,
        tokens_per_second=completion / busy if busy else None,
    )


def window_models(serve_dir: Path, since_seconds: float, now: float | None = None) -> list[str]:
    """The models that answered chat or completions requests in the window, in the order first seen."""
    start = (now or time.time()) - since_seconds
    connection = sqlite3.connect(f"file:{database_path(serve_dir)}?mode=ro", uri=True)
    try:
        rows = connection.execute(
            "SELECT model FROM requests WHERE ts >= ? AND model IS NOT NULL AND endpoint IN "
            "('/v1/chat/completions', '/v1/completions') GROUP BY model ORDER BY MIN(id)", (start,)).fetchall()
    finally:
        connection.close()
    return [row[0] for row in rows]


def all_scores(serve_dir: Path, since_seconds: float, thresholds: Any = None, now: float | None = None,
               embedder: Any = None) -> list["Score"]:
    """Drift and quality scores of every model that answered in the window (monitor/drift.py, quality.py)."""
    from tunelab.monitor.drift import drift_scores
    from tunelab.monitor.quality import quality_scores

    now = now if now is not None else time.time()
    scores = []
    for model in window_models(serve_dir, since_seconds, now):
        scores += drift_scores(serve_dir, model, since_seconds, thresholds, now=now, embedder=embedder)
        scores += quality_scores(serve_dir, model, since_seconds, thresholds, now=now)
    return scores
