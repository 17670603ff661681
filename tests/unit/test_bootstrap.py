"""Bootstrap intervals cover the true value at about their nominal rate on synthetic data with a known answer."""

import numpy as np
import pytest

from tunelab.evaluate.bootstrap import paired_intervals, percentile_interval, resample_weights, resampled_scores
from tunelab.metrics.registry import METRICS

RATE = METRICS["exact_match"].score  # (hits, rows) -> hits / rows


def rate_stats(hits):
    return np.column_stack([hits, np.ones(len(hits))]).astype(float)


def test_weights_are_resamples_of_all_rows():
    weights = resample_weights(50, 200, seed=1)
    assert weights.shape == (200, 50) and (weights.sum(axis=1) == 50).all()
    assert np.array_equal(weights, resample_weights(50, 200, seed=1))  # same seed, same resamples


def test_interval_of_a_rate_covers_the_true_rate_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    true_rate, rows, trials, covered = 0.3, 150, 300, 0
    for trial in range(trials):
        hits = (rng.random(rows) < true_rate).astype(float)
        weights = resample_weights(rows, 400, seed=trial)
        low, high = percentile_interval(resampled_scores(RATE, rate_stats(hits), weights), 0.95)
        covered += low <= true_rate <= high
    assert 0.90 <= covered / trials <= 0.99


def test_paired_interval_of_a_difference_covers_the_true_difference():
    """Base right with p=0.5; tuned keeps base's right rows and fixes 20% of the wrong ones: true gain 0.1."""
    rng = np.random.default_rng(1)
    rows, trials, covered, excluded_zero = 200, 200, 0, 0
    for trial in range(trials):
        base = rng.random(rows) < 0.5
        tuned = base | (rng.random(rows) < 0.2)
        weights = resample_weights(rows, 400, seed=trial)
        interval = paired_intervals(RATE, rate_stats(base), rate_stats(tuned), weights, 0.95)["delta"]
        covered += interval[0] <= 0.1 <= interval[1]
        excluded_zero += interval[0] > 0
    assert 0.90 <= covered / trials <= 0.99
    # pairing makes the small gain visible: an unpaired interval of this gain would often include zero
    assert excluded_zero / trials > 0.95


def test_identical_models_have_a_zero_width_difference():
    hits = rate_stats(np.array([1, 0, 1, 1, 0], dtype=float))
    intervals = paired_intervals(RATE, hits, hits, resample_weights(5, 100, 0), 0.9)
    assert intervals["delta"] == [0.0, 0.0]
    assert intervals["base"][0] <= 0.6 <= intervals["base"][1]


def test_interval_ignores_resamples_where_the_metric_is_undefined():
    assert percentile_interval(np.array([np.nan, 1.0, 2.0, 3.0]), 0.5) == pytest.approx([1.5, 2.5])
    assert all(np.isnan(percentile_interval(np.array([np.nan]), 0.95)))
