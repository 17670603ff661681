"""Metric values against hand-computed examples."""

import math

import pytest

from tunelab.metrics.rows import label_metrics, perplexity, text_metrics


def test_exact_match_and_json_metrics():
    references = ['{"a": 1, "b": 2}', '{"a": 3}', '{"a": 4}', '{"a": 5}']
    predictions = ['{"a": 1, "b": 2}', '{"a":3}', "not json", '{"a": 6}']
    metrics = text_metrics(predictions, references)
    assert metrics["exact_match"] == 0.25  # only the first is the same text
    assert metrics["valid_json"] == 0.75
    assert metrics["json_match"] == 0.5  # '{"a":3}' is the same object written differently


def test_no_json_metrics_when_references_are_not_json():
    assert set(text_metrics(["a"], ["a"])) == {"exact_match"}


def test_label_metrics_by_hand():
    references = ["spam", "spam", "ham", "ham", "ham", "ham"]
    predictions = ["spam", "ham", "ham", "ham", "spam", "ham"]
    metrics = label_metrics(predictions, references, labels=["ham", "spam"])
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # spam: tp=1 fp=1 fn=1 -> p=r=f1=0.5; ham: tp=3 fp=1 fn=1 -> p=r=f1=0.75
    assert metrics["per_class"]["spam"]["f1"] == pytest.approx(0.5)
    assert metrics["per_class"]["ham"]["precision"] == pytest.approx(0.75)
    assert metrics["f1"] == pytest.approx(0.625)
    assert metrics["confusion"] == [[3, 1], [1, 1]]
    # MCC = (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) with spam positive: (1*3 - 1*1) / sqrt(2*2*4*4)
    assert metrics["mcc"] == pytest.approx(2 / 8)


def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(7)) == pytest.approx(7)
