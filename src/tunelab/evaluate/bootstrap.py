"""Paired bootstrap confidence intervals for metrics and for base-vs-tuned differences.

Rows are resampled with replacement; base and tuned are scored on the same resample, so the interval of the
difference accounts for the two models being judged on the same rows (Koehn 2004's paired bootstrap, as sacrebleu
does it for BLEU). Each resample is a vector of how often each row was drawn, so a metric on a resample is its score
of the weighted sum of per-row statistics (registry.py): no row is re-scored, and corpus BLEU stays exact.
Percentile intervals. numpy does this in a few lines; scipy.stats.bootstrap would re-call the metric per resample
and has no notion of corpus statistics.
"""

from __future__ import annotations

import math
from typing import Any, Callable


def resample_weights(rows: int, resamples: int, seed: int) -> Any:
    """(resamples, rows) draw counts: each row is how many times that row appears in one bootstrap sample."""
    import numpy as np

    generator = np.random.default_rng(seed)
    return generator.multinomial(rows, np.full(rows, 1.0 / rows), size=resamples).astype(np.float64)


def resampled_scores(score: Callable[[Any], float], stats: Any, weights: Any) -> Any:
    """The metric on every resample: `score` of the draw-weighted sum of per-row statistics."""
    import numpy as np

    summed = weights @ stats  # (resamples, k)
    return np.array([score(row) for row in summed], dtype=np.float64)


def percentile_interval(values: Any, confidence: float) -> list[float]:
    import numpy as np

    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return [math.nan, math.nan]
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return [float(low), float(high)]


def paired_intervals(score: Callable[[Any], float], base_stats: Any, tuned_stats: Any, weights: Any,
                     confidence: float) -> dict[str, list[float]]:
    """Intervals for base, tuned and tuned - base, all from the same resamples."""
    base = resampled_scores(score, base_stats, weights)
    tuned = resampled_scores(score, tuned_stats, weights)
    return {"base": percentile_interval(base, confidence), "tuned": percentile_interval(tuned, confidence),
            "delta": percentile_interval(tuned - base, confidence)}


def relative_change_interval(score: Callable[[Any], float], base_stats: Any, tuned_stats: Any, weights: Any,
                             confidence: float) -> list[float]:
    """Interval of tuned / base - 1 (the forgetting figure: relative change of perplexity)."""
    base = resampled_scores(score, base_stats, weights)
    tuned = resampled_scores(score, tuned_stats, weights)
    return percentile_interval(tuned / base - 1, confidence)
