"""Live quality: how a model's answers fare in service, per model and per version (the run folder that answered),
over a window and as a series over time buckets.

- thumbs_up_rate: ups over rated feedback (Wilson 95% interval); flagged below its threshold.
- correction_rate: feedback that carries a correction or a preferred answer over all feedback (Wilson); above.
- error_rate: requests answered with status >= 400 or an error over all requests (Wilson); above.
- refusal_rate: successful answers (content logged) in which any choice opens with or holds a refusal phrase
  (REFUSAL) over those answers (Wilson); above.
- answer_length: mean completion tokens per successful request (Student t 95% interval). Flagged when it falls
  below `threshold` x the previous window's mean (an answer that halves is a model that gave up, while no absolute
  length suits every task): the Score's threshold is that absolute figure, None when the previous window is empty.

Feedback counts in the window it arrived in, for the version whose answer it judged. Fewer than MIN_LIVE rows
behind a rate: shown, never flagged (the threshold is dropped and the detail says so).
"""

from __future__ import annotations

import math
import re
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from tunelab.monitor.requestlog import database_path, open_read_only
from tunelab.monitor.scores import Point, Score, Series
from tunelab.monitor.thresholds import MIN_LIVE, QUALITY_THRESHOLDS, Thresholds, for_version

GENERATION_ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
REFUSAL = re.compile(r"\b(I can'?t|I cannot|I'm sorry,? but|I am sorry,? but|I'm unable to|I am unable to|"
                     r"I won'?t be able to|As an AI|As a language model)\b", re.IGNORECASE)
FLAG_BELOW = {"thumbs_up_rate", "answer_length"}
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Logged:
    ts: float
    version: str | None
    failed: bool
    completion_tokens: int | None
    output: str | None


@dataclass(frozen=True)
class Judged:
    ts: float
    version: str | None
    rating: str | None
    corrected: bool


def wilson(successes: int, total: int, z: float = Z95) -> tuple[float | None, float | None]:
    """The Wilson score interval of a proportion (well-behaved at 0, 1 and small counts, unlike the normal one)."""
    if total == 0:
        return None, None
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z / (1 + z * z / total) * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: list[float]) -> tuple[float | None, float | None, float | None]:
    """Mean and its Student t 95% interval."""
    if not values:
        return None, None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None, None
    from scipy.stats import t

    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
    half = float(t.ppf(0.975, len(values) - 1)) * spread
    return mean, mean - half, mean + half


def is_refusal(output: str) -> bool:
    import json

    return any(REFUSAL.search(text or "") for text in json.loads(output))


# ---- reading the log ------------------------------------------------------------------------------------------


def read_window(connection: sqlite3.Connection, model: str, start: float, end: float
                ) -> tuple[list[Logged], list[Judged]]:
    marks = ", ".join("?" for _ in GENERATION_ENDPOINTS)
    requests = [Logged(ts, adapter, status >= 400 or error is not None, tokens, output) for ts, adapter, status, error,
                tokens, output in connection.execute(
                    f"SELECT ts, adapter, status, error, completion_tokens, output FROM requests WHERE model = ? "
                    f"AND ts >= ? AND ts < ? AND endpoint IN ({marks}) ORDER BY id",
                    (model, start, end, *GENERATION_ENDPOINTS))]
    feedback = [Judged(ts, adapter, rating, bool(correction or preferred)) for ts, adapter, rating, correction,
                preferred in connection.execute(
                    "SELECT f.ts, r.adapter, f.rating, f.correction, f.preferred FROM feedback f JOIN requests r "
                    "ON r.request_id = f.completion_id WHERE r.model = ? AND f.ts >= ? AND f.ts < ? ORDER BY f.seq",
                    (model, start, end))]
    return requests, feedback


# ---- the scores -----------------------------------------------------------------------------------------------


def quality_scores(serve_dir: Path, model: str, since_s: float, thresholds: Thresholds | None = None,
                   now: float | None = None) -> list[Score]:
    """Every quality score of `model` over the last `since_s` seconds, per version that answered; answer_length
    against the window before it."""
    end = now if now is not None else time.time()
    with closing(open_read_only(database_path(serve_dir))) as connection:
        requests, feedback = read_window(connection, model, end - since_s, end)
        earlier, _ = read_window(connection, model, end - 2 * since_s, end - since_s)
    versions = list(dict.fromkeys([r.version for r in requests] + [f.version for f in feedback]))
    scores = []
    for version in versions:
        mine = [r for r in requests if r.version == version]
        before = [r for r in earlier if r.version == version]
        scores += version_quality(model, version, mine, [f for f in feedback if f.version == version], before,
                                  for_version(thresholds, version))
    return scores


def version_quality(model: str, version: str | None, requests: list[Logged], feedback: list[Judged],
                    earlier: list[Logged], thresholds: dict[str, float]) -> list[Score]:
    rated = [f for f in feedback if f.rating in ("up", "down")]
    answered = [r for r in requests if not r.failed]
    with_output = [r for r in answered if r.output is not None]
    scores = [
        rate(model, version, "thumbs_up_rate", sum(f.rating == "up" for f in rated), len(rated), thresholds,
             "thumbs up over rated feedback"),
        rate(model, version, "correction_rate", sum(f.corrected for f in feedback), len(feedback), thresholds,
             "feedback with a correction or a preferred answer over all feedback"),
        rate(model, version, "error_rate", sum(r.failed for r in requests), len(requests), thresholds,
             "requests answered with an error over all requests"),
        rate(model, version, "refusal_rate", sum(is_refusal(r.output) for r in with_output), len(with_output),
             thresholds, "answers with a refusal phrase over answers logged with content"
             if with_output else "no answers logged with content (serve with --log-content)"),
        answer_length(model, version, answered, earlier, thresholds["answer_length"]),
    ]
    return scores


def rate(model: str, version: str | None, name: str, hits: int, total: int, thresholds: dict[str, float],
         what: str) -> Score:
    low, high = wilson(hits, total)
    threshold = thresholds[name]
    detail = f"{what} ({hits}/{total}, Wilson 95% interval)" if total else f"{what}: none in the window"
    if 0 < total < MIN_LIVE:
        detail += f"; too few ({total} < {MIN_LIVE}) to flag (threshold {threshold:g})"
    return Score(model, name, "quality", hits / total if total else None,
                 threshold if total >= MIN_LIVE else None, "below" if name in FLAG_BELOW else "above",
                 low=low, high=high, count=total, version=version, detail=detail)


def answer_length(model: str, version: str | None, answered: list[Logged], earlier: list[Logged],
                  fraction: float) -> Score:
    lengths = [float(r.completion_tokens) for r in answered if r.completion_tokens is not None]
    before = [float(r.completion_tokens) for r in earlier if not r.failed and r.completion_tokens is not None]
    mean, low, high = mean_interval(lengths)
    threshold = fraction * sum(before) / len(before) if len(before) >= MIN_LIVE else None
    detail = "mean completion tokens per answer (t 95% interval)"
    if threshold is None:
        detail += f"; the previous window has too few answers ({len(before)}) to compare with"
    elif len(lengths) < MIN_LIVE:
        detail += f"; too few answers ({len(lengths)} < {MIN_LIVE}) to flag"
        threshold = None
    else:
        detail += f"; flagged under {fraction:g} x the previous window's mean"
    return Score(model, "answer_length", "quality", mean, threshold, "below", low=low, high=high,
                 count=len(lengths), version=version, detail=detail)


def quality_series(serve_dir: Path, model: str, since_s: float, buckets: int = 12,
                   thresholds: Thresholds | None = None, now: float | None = None) -> list[Series]:
    """Each quality score of `model` per version over `buckets` equal time buckets of the last `since_s` seconds
    (answer_length: the mean, without its comparison to an earlier window)."""
    end = now if now is not None else time.time()
    start, width = end - since_s, since_s / buckets
    with closing(open_read_only(database_path(serve_dir))) as connection:
        requests, feedback = read_window(connection, model, start, end)
    versions = list(dict.fromkeys([r.version for r in requests] + [f.version for f in feedback]))
    series = []
    for version in versions:
        limits = for_version(thresholds, version)
        points: dict[str, list[Point]] = {name: [] for name in QUALITY_THRESHOLDS}
        for index in range(buckets):
            low, high = start + index * width, start + (index + 1) * width
            bucket = version_quality(
                model, version, [r for r in requests if r.version == version and low <= r.ts < high],
                [f for f in feedback if f.version == version and low <= f.ts < high], [], limits)
            for score in bucket:
                points[score.name].append(Point(low, score.value, score.low, score.high, score.count))
        series += [Series(model, name, "quality", values, None if name == "answer_length" else limits[name],
                          version) for name, values in points.items()]
    return series
